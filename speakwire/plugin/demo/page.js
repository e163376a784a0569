// speakwire demo page: WebRTC audio from the agent, control and events over the "control" data channel.
// No external assets: everything here runs on loopback only. With ?autotest=1 the page runs a
// scripted check on its own and POSTs what getStats showed to /autotest (used by the test suite).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { pc: null, channel: null, events: [], listeners: [], turns: new Map(), stats: [], ttfa: [] };

function setStatus(text) { $("status").textContent = text; }
function showError(text) { $("error").textContent = text; }

function send(command) {
  if (state.channel && state.channel.readyState === "open") state.channel.send(JSON.stringify(command));
}

// --- conversation rendering ---------------------------------------------------------------------

function addUserLine(text) {
  const div = document.createElement("div");
  div.className = "turn user";
  div.textContent = text;
  $("conversation").append(div);
  div.scrollIntoView({ block: "end" });
}

function startReply(event) {
  const div = document.createElement("div");
  div.className = "turn agent";
  const spans = event.words.map((word, i) => {
    const span = document.createElement("span");
    span.className = "w";
    span.textContent = word;
    div.append(span);
    if (i < event.words.length - 1) div.append(" ");
    return span;
  });
  $("conversation").append(div);
  div.scrollIntoView({ block: "end" });
  state.turns.set(event.turn, { div, spans, written: "", ends: wordEnds(event.words) });
}

function wordEnds(words) {
  const ends = [];
  let at = 0;
  for (const w of words) { at += w.length + 1; ends.push(at - 1); }
  return ends;
}

function onEvent(event) {
  state.events.push({ at: performance.now(), ...event });
  const turn = state.turns.get(event.turn);
  switch (event.type) {
    case "reply_start": startReply(event); break;
    case "llm_text":
      if (turn) {
        turn.written += event.token;
        const length = turn.written.trim().length;
        turn.ends.forEach((end, i) => { if (end <= length) turn.spans[i].classList.add("written"); });
      }
      break;
    case "word":
      if (turn && event.index >= 0) turn.spans[event.index].classList.add("heard");
      break;
    case "barge_in":
      if (turn) turn.div.classList.add("cut");
      $("barge-latency").textContent = `${event.latency_ms.toFixed(1)} ms`;
      break;
    case "speed":
      $("speed").textContent = `${event.speed.toFixed(2)}×`;
      break;
    case "figures":
      if (event.ttfa_ms.length) $("ttfa").textContent = `${event.ttfa_ms[event.ttfa_ms.length - 1].toFixed(0)} ms`;
      $("underruns").textContent = String(event.underruns);
      $("words").textContent = String(event.words_heard);
      break;
    case "error": showError(event.message); break;
  }
  for (const listener of [...state.listeners]) listener(event);
}

function nextEvent(predicate, timeoutMs = 20000) {
  const seen = state.events.find((e) => predicate(e));
  if (seen) return Promise.resolve(seen);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { drop(); reject(new Error("timed out waiting for an event")); }, timeoutMs);
    const listener = (event) => { if (predicate(event)) { drop(); resolve(event); } };
    const drop = () => { clearTimeout(timer); state.listeners = state.listeners.filter((l) => l !== listener); };
    state.listeners.push(listener);
  });
}

// --- WebRTC -------------------------------------------------------------------------------------

function gatheringDone(pc, timeoutMs) {
  // The server does no trickle ICE: the offer must carry its candidates (bounded wait).
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

async function connect() {
  setStatus("connecting…");
  const pc = new RTCPeerConnection({ iceServers: [] });
  state.pc = pc;
  pc.addTransceiver("audio", { direction: "recvonly" });
  const channel = pc.createDataChannel("control");
  state.channel = channel;
  channel.onmessage = (message) => onEvent(JSON.parse(message.data));
  channel.onopen = () => setControls(true);
  pc.ontrack = (event) => {
    const audio = $("audio");
    audio.srcObject = event.streams[0] || new MediaStream([event.track]);
    // Bounded: without an autoplay grant play() may never settle.
    Promise.race([audio.play(), new Promise((r) => setTimeout(r, 2000))]).catch((e) => showError(`audio: ${e}`));
  };
  pc.onconnectionstatechange = () => {
    setStatus(pc.connectionState);
    if (pc.connectionState === "failed" || pc.connectionState === "closed") setControls(false);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await gatheringDone(pc, 2000);
  const response = await fetch("/offer", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(`offer refused: ${answer.error}`);
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  setInterval(pollStats, 50);
}

async function pollStats() {
  if (!state.pc) return;
  const report = await state.pc.getStats();
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      const sample = {
        at: performance.now(),
        totalSamplesReceived: s.totalSamplesReceived || 0,
        audioLevel: s.audioLevel || 0,
        totalAudioEnergy: s.totalAudioEnergy || 0,
        concealedSamples: s.concealedSamples || 0,
      };
      state.stats.push(sample);
      if (state.stats.length > 4000) state.stats.shift();
      $("level").textContent = sample.audioLevel.toFixed(3);
      $("samples").textContent = String(sample.totalSamplesReceived);
    }
  });
}

// --- controls -----------------------------------------------------------------------------------

function setControls(enabled) {
  for (const el of document.querySelectorAll("#composer input, #composer button:not(#start), .speed button, #slider")) {
    el.disabled = !enabled;
  }
}

function say(text) {
  addUserLine(text);
  send({ type: "say", text });
}

function setSpeed(speed) {
  $("slider").value = String(speed);
  $("slider-value").textContent = `${Number(speed).toFixed(2)}×`;
  for (const b of document.querySelectorAll(".speed button")) {
    b.classList.toggle("active", Number(b.dataset.speed) === Number(speed));
  }
  send({ type: "speed", speed: Number(speed) });
}

function bargeIn() { send({ type: "barge_in" }); }

$("start").addEventListener("click", () => {
  $("start").disabled = true;
  connect().catch((e) => { showError(String(e)); $("start").disabled = false; });
});
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("message").value.trim();
  if (text) { say(text); $("message").value = ""; }
});
$("barge").addEventListener("click", bargeIn);
for (const b of document.querySelectorAll(".speed button")) b.addEventListener("click", () => setSpeed(b.dataset.speed));
$("slider").addEventListener("input", () => { $("slider-value").textContent = `${Number($("slider").value).toFixed(2)}×`; });
$("slider").addEventListener("change", () => setSpeed($("slider").value));

// --- ?autotest=1: the page checks itself --------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function autotest() {
  const marks = {};
  const mark = (name) => { marks[name] = performance.now(); };
  const result = { marks, errors: [] };
  try {
    mark("start");
    $("start").click();
    await nextEvent((e) => e.type === "reply_start");
    mark("greeting_start");
    result.greeting = await nextEvent((e) => e.type === "turn_end" && e.turn === 1);
    mark("greeting_end");
    // The same fixed reply at Normal, then at 2.0 from the slider.
    setSpeed(1.0);
    await nextEvent((e) => e.type === "speed" && e.speed === 1.0);
    say("hello");
    const normal = await nextEvent((e) => e.type === "reply_start" && e.turn === 2);
    result.normal = await nextEvent((e) => e.type === "turn_end" && e.turn === normal.turn);
    $("slider").value = "2.0";
    $("slider").dispatchEvent(new Event("change"));
    result.fastSpeed = await nextEvent((e) => e.type === "speed" && e.speed === 2.0);
    say("hello");
    const fast = await nextEvent((e) => e.type === "reply_start" && e.turn === 3);
    result.fast = await nextEvent((e) => e.type === "turn_end" && e.turn === fast.turn);
    setSpeed(1.0);
    await sleep(300);
    // A long reply, cut once a few of its words were heard.
    say("please interrupt me");
    const long = await nextEvent((e) => e.type === "reply_start" && e.turn === 4);
    let heard = 0;
    await nextEvent((e) => e.type === "word" && e.turn === long.turn && ++heard >= 4);
    mark("barge_in");
    $("barge").click();
    result.bargeIn = await nextEvent((e) => e.type === "barge_in");
    await sleep(1500);
    mark("end");
  } catch (e) {
    result.errors.push(String(e));
  }
  result.stats = state.stats;
  result.events = state.events;
  await fetch("/autotest", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(result) });
}

if (new URLSearchParams(location.search).get("autotest") === "1") autotest();
