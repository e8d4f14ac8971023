// The voice-infra page: sign in with a token, record with the microphone, upload, list,
// play back through presigned URLs, delete. No build step, no external assets.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("voice-infra-token") || "";
let recorder = null;
let chunks = [];

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function showLimits(response) {
  const policy = response.headers.get("RateLimit-Policy");
  if (!policy) return;
  $("limits").hidden = false;
  $("limit-policy").textContent = policy;
  $("limit-state").textContent = response.headers.get("RateLimit") || "-";
  $("limit-retry").textContent = response.headers.get("Retry-After") || "-";
}

async function api(method, path, body, contentType) {
  const headers = { Authorization: "Bearer " + token };
  if (contentType) headers["Content-Type"] = contentType;
  const response = await fetch(path, { method, headers, body });
  showLimits(response);
  if (response.status === 401) {
    signOut();
    throw new Error("the token was refused: sign in again");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* no body */ }
    throw new Error(response.status + " " + detail);
  }
  return response;
}

function signedIn() {
  const on = Boolean(token);
  $("recorder").hidden = !on;
  $("messages").hidden = !on;
  $("signout-button").hidden = !on;
  $("signin-button").hidden = on;
  $("token").hidden = on;
  $("who").textContent = on ? "signed in" : "";
}

function signOut() {
  token = "";
  sessionStorage.removeItem("voice-infra-token");
  $("message-list").replaceChildren();
  signedIn();
}

async function signIn() {
  token = $("token").value.trim();
  if (!token) return say("paste a token first", true);
  sessionStorage.setItem("voice-infra-token", token);
  signedIn();
  await refresh();
}

async function refresh() {
  try {
    const response = await api("GET", "/v1/messages?limit=100");
    const data = await response.json();
    const list = $("message-list");
    list.replaceChildren(...data.items.map(renderItem));
    list.dataset.count = String(data.items.length);
    say(data.items.length + " message(s)");
  } catch (error) {
    say(error.message, true);
  }
}

function renderItem(item) {
  const li = document.createElement("li");
  li.dataset.id = item.id;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = item.id + " (" + item.size + " bytes)";
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.preload = "none";
  audio.src = item.url;
  audio.addEventListener("ended", () => { li.dataset.played = "ended"; });
  audio.addEventListener("timeupdate", () => {
    if (audio.currentTime > 0 && !li.dataset.played) li.dataset.played = "playing";
  });
  const play = document.createElement("button");
  play.type = "button";
  play.className = "play";
  play.textContent = "Play";
  play.addEventListener("click", () => audio.play().catch((e) => say(e.message, true)));
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "delete";
  remove.textContent = "Delete";
  remove.addEventListener("click", async () => {
    try {
      await api("DELETE", "/v1/messages/" + item.id.split("/").map(encodeURIComponent).join("/"));
      say("deleted " + item.id);
      await refresh();
    } catch (error) {
      say(error.message, true);
    }
  });
  li.append(name, audio, play, remove);
  return li;
}

async function startRecording() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.addEventListener("dataavailable", (event) => {
      if (event.data.size) chunks.push(event.data);
    });
    recorder.addEventListener("stop", () => {
      stream.getTracks().forEach((track) => track.stop());
      upload();
    });
    recorder.start();
    $("record").disabled = true;
    $("stop").disabled = false;
    $("recording-state").textContent = "recording...";
  } catch (error) {
    say("microphone: " + error.message, true);
  }
}

function stopRecording() {
  if (recorder && recorder.state !== "inactive") recorder.stop();
  $("record").disabled = false;
  $("stop").disabled = true;
  $("recording-state").textContent = "";
}

async function upload() {
  const type = (recorder && recorder.mimeType) || "audio/webm";
  const blob = new Blob(chunks, { type });
  try {
    const response = await api("POST", "/v1/messages", blob, type);
    const item = await response.json();
    say("uploaded " + item.id);
    await refresh();
  } catch (error) {
    say("upload failed: " + error.message, true);
  }
}

$("signin-button").addEventListener("click", signIn);
$("signout-button").addEventListener("click", signOut);
$("record").addEventListener("click", startRecording);
$("stop").addEventListener("click", stopRecording);
$("refresh").addEventListener("click", refresh);
signedIn();
if (token) refresh();
