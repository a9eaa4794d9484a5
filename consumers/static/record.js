// /record: getUserMedia -> an AudioContext at 16 kHz (the browser resamples) -> an AudioWorklet ->
// 16-bit PCM over a WebSocket to /v1/streams/{id}/ws. ?stream=ID&autostart=1 starts without a click.
"use strict";
const RATE = 16000;
const status = document.getElementById("status");
const startBtn = document.getElementById("start"), stopBtn = document.getElementById("stop");
let ctx = null, ws = null, media = null, sent = 0;
function pcm16(f32) {
  const out = new Int16Array(f32.length);
  for (let i = 0; i < f32.length; i++) { const v = Math.max(-1, Math.min(1, f32[i])); out[i] = Math.round(v * 32767); }
  return out.buffer;
}
async function start() {
  const id = document.getElementById("stream").value.trim();
  const token = document.getElementById("token").value;
  startBtn.disabled = true;
  try {
    media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
    ctx = new AudioContext({ sampleRate: RATE });
    await ctx.audioWorklet.addModule("/static/recorder-worklet.js");
    const url = new URL(`/v1/streams/${encodeURIComponent(id)}/ws`, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("rate", RATE);
    if (token) url.searchParams.set("token", token);
    ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error("cannot connect to the server")); });
    ws.onclose = e => { status.textContent = e.code === 1000 ? `stopped: ${sent} samples sent` : `closed by the server (${e.code}): ${e.reason || "connection lost"}`; cleanup(); };
    const node = new AudioWorkletNode(ctx, "capture");
    node.port.onmessage = e => { if (ws.readyState === WebSocket.OPEN) { ws.send(pcm16(e.data)); sent += e.data.length; } };
    ctx.createMediaStreamSource(media).connect(node);
    stopBtn.disabled = false;
    status.textContent = `streaming as "${id}" at ${RATE} Hz ...`;
    document.body.dataset.state = "streaming";
  } catch (err) {
    status.textContent = "could not start: " + err.message;
    cleanup();
  }
}
function cleanup() {
  if (media) media.getTracks().forEach(t => t.stop());
  if (ctx) ctx.close();
  media = ctx = null;
  startBtn.disabled = false; stopBtn.disabled = true;
  document.body.dataset.state = "idle";
}
function stop() { if (ws && ws.readyState === WebSocket.OPEN) ws.send("end"); }
document.getElementById("form").addEventListener("submit", e => { e.preventDefault(); start(); });
stopBtn.addEventListener("click", stop);
const params = new URLSearchParams(location.search);
if (params.get("stream")) document.getElementById("stream").value = params.get("stream");
if (params.get("token")) document.getElementById("token").value = params.get("token");
if (params.get("autostart")) start();
