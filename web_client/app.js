// The voice demo: connects to this server's OpenAI Realtime session over WebRTC (default) or WebSocket,
// push-to-talk or hands-free turns (server VAD or semantic VAD), live transcript, level meters, barge-in, latency
// per turn.
// `window.lfmDemo` is a small read-only view of what happened, for tests and for the curious.

import {AudioEngine, MicError} from './audio.js';
import {Refused, RtcTransport, WsTransport} from './transport.js';
import {MODES, SpeechEnd, describe, refusesTurnDetection, turnDetection} from './turns.js';

const $ = (id) => document.getElementById(id);
const now = () => performance.now();
const AUDIBLE = 0.002; // RMS above which the assistant's audio counts as playing
const FRAME_S = 0.08; // one audio token of LFM2-Audio: 80 ms (mirrors FRAME_MS in models/defaults.py)
const SPEECH_LEAD_MS = 1000; // look this far before speech_started for the turn's loudest mic level

// ---- settings: the form, saved in localStorage (never the key); query parameters override
const form = $('settings-form');
const FIELDS = ['transport', 'mic', 'vad_silence_ms', 'eagerness', 'max_tokens', 'audio_temperature', 'audio_top_k', 'seed',
  'transcribe', 'instructions', 'ice'];
const STORE = 'lfm-audio-demo';

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(STORE) || '{}');
  } catch {
    saved = {};
  }
  const query = Object.fromEntries(new URLSearchParams(location.search));
  for (const name of [...FIELDS, 'mode']) {
    const value = name in query ? query[name] : saved[name];
    if (value === undefined) continue;
    if (name === 'mode') {
      document.querySelector(`input[name=mode][value="${MODES.includes(value) ? value : 'ptt'}"]`).checked = true;
      continue;
    }
    if (name === 'mic') {
      S.wantedMic = value; // its option appears once the devices are listed
      continue;
    }
    const el = form.elements[name];
    if (el.type === 'checkbox') el.checked = value === true || value === '1' || value === 'true';
    else el.value = value;
  }
}

function settings() {
  const f = form.elements;
  const num = (name) => (f[name].value.trim() === '' ? null : Number(f[name].value));
  return {
    transport: f.transport.value,
    mode: document.querySelector('input[name=mode]:checked').value,
    micId: S.wantedMic,
    vadSilenceMs: num('vad_silence_ms') ?? 500,
    eagerness: f.eagerness.value,
    maxTokens: num('max_tokens'),
    audioTemperature: num('audio_temperature'),
    audioTopK: num('audio_top_k'),
    seed: num('seed'),
    transcribe: f.transcribe.checked,
    instructions: f.instructions.value.trim(),
    key: f.key.value.trim(),
    ice: f.ice.value.trim(),
  };
}

function saveSettings() {
  const f = form.elements;
  const out = {mode: settings().mode};
  for (const name of FIELDS) out[name] = f[name].type === 'checkbox' ? f[name].checked : f[name].value;
  out.mic = S.wantedMic;
  try {
    localStorage.setItem(STORE, JSON.stringify(out));
  } catch {
    // private mode: fine
  }
}

function iceServers(text) {
  if (!text) return [];
  if (text.startsWith('[')) {
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new Refused('protocol', `The ICE servers setting is not a valid JSON list: ${e.message}`);
    }
  }
  return text.split(',').map((u) => u.trim()).filter(Boolean).map((u) => ({urls: [u]}));
}

function sessionConfig(s) {
  const session = {
    type: 'realtime',
    audio: {
      input: {
        turn_detection: turnDetection(s, S.turnFallback !== null),
        transcription: s.transcribe ? {model: 'lfm-audio'} : null,
      },
    },
    lfm_audio: {seed: s.seed},
  };
  if (s.audioTemperature !== null) session.lfm_audio.audio_temperature = s.audioTemperature;
  if (s.audioTopK !== null) session.lfm_audio.audio_top_k = s.audioTopK;
  if (s.maxTokens) session.max_output_tokens = s.maxTokens;
  if (s.instructions) session.instructions = s.instructions;
  return session;
}

// ---- state, and the test hook
const audio = new AudioEngine();
const S = {
  state: 'idle', // idle | connecting | connected | error | lost
  transport: null,
  mode: 'ptt',
  muted: false,
  talking: false, // push-to-talk held
  talkStart: 0,
  userSpeaking: false, // server VAD says so
  response: null, // the active response's turn record
  dropped: new Set(), // responses whose late audio deltas are ignored (barged in)
  turnEnd: null, // when the user's turn ended (speech_stopped or push-to-talk release)
  speechEnd: null, // when the user's speech ended (push to talk: the release; else the mic level, turns.js)
  speechStartedAt: null, // when speech_started arrived
  turnFallback: null, // the server's refusal of semantic_vad in this session (hands-free is then server_vad)
  outMuted: false, // WebRTC: the remote audio element is muted after a barge-in
  playerPlaying: false, // WebSocket: the player worklet has audio
  rtcPlaying: false, // WebRTC: the server's track is sending a response (output_audio_buffer.started .. stopped)
  remoteEl: null,
  wantedMic: '', // the chosen microphone's deviceId ('' is the default one)
  pendingUpdates: [], // session.update events awaiting session.updated: {id, rtt, at}
  timers: [],
  lastAudible: 0,
  items: new Map(), // item_id -> transcript entry
};
const history = {out: []}; // recent [t, rms] of the assistant's audible output
const micLevels = new SpeechEnd();
const demo = {
  state: 'idle',
  transport: null,
  mode: null,
  turnDetection: undefined, // what the server reports in force (session.created / session.updated)
  turnFallback: null, // the server's message when it refused semantic_vad
  sessionId: null,
  sampleRate: null,
  readyz: null,
  counters: {events: {}, sent: {}, audioDeltas: 0, audioBytes: 0, responses: 0, bargeIns: 0, truncates: 0},
  rms: {mic: 0, micMax: 0, out: 0, outMax: 0, remote: 0, remoteMax: 0},
  turns: [],
  bargeIns: [],
  rttMs: null,
  errors: [],
  error: null,
  log: [], // [ms, event type, response or item id] of recent server events (not audio deltas)
  transcript: () => [...document.querySelectorAll('#transcript li[data-role]')].map((li) => ({
    role: li.dataset.role, item: li.dataset.item, text: li.querySelector('.text').textContent,
    interrupted: li.classList.contains('interrupted')})),
  resetPeaks() {
    this.rms.micMax = 0;
    this.rms.outMax = 0;
    this.rms.remoteMax = 0;
  },
};
window.lfmDemo = demo;

function setState(state, text) {
  S.state = state;
  demo.state = state;
  const pill = $('status');
  pill.dataset.state = state;
  pill.textContent = text || {idle: 'Not connected', connecting: 'Connecting…', connected: 'Connected',
    error: 'Not connected', lost: 'Connection lost'}[state];
  $('mute').disabled = state !== 'connected';
  $('disconnect').disabled = !(state === 'connected' || state === 'connecting');
  renderTalk();
}

function renderTalk() {
  const b = $('talk');
  let [st, label, hint] = S.state === 'lost' ? ['idle', 'Reconnect', 'click to connect again']
    : ['idle', 'Start', 'click to connect'];
  if (S.state === 'connecting') [st, label, hint] = ['connecting', 'Connecting…', ''];
  else if (S.state === 'connected') {
    const assistant = assistantAudible();
    if (S.mode === 'ptt') {
      if (S.talking) [st, label, hint] = ['talking', 'Listening…', 'release to send'];
      else if (S.muted) [st, label, hint] = ['muted', 'Muted', 'unmute to talk'];
      else if (assistant) [st, label, hint] = ['assistant', 'Speaking…', 'hold to interrupt and talk'];
      else [st, label, hint] = ['ready', 'Hold to talk', 'or hold the space bar'];
    } else if (S.muted) [st, label, hint] = ['muted', 'Muted', 'unmute to talk'];
    else if (S.userSpeaking) [st, label, hint] = ['user', 'You\'re speaking', ''];
    else if (assistant) [st, label, hint] = ['assistant', 'Speaking…', 'talk or click to interrupt'];
    else [st, label, hint] = ['ready', 'Listening', 'just talk'];
  }
  if (b.dataset.state !== st || b.querySelector('.label').textContent !== label) {
    b.dataset.state = st;
    b.querySelector('.label').textContent = label;
    b.querySelector('.hint').textContent = hint;
  }
}

function assistantAudible() {
  return now() - S.lastAudible < 250 || S.playerPlaying || S.rtcPlaying;
}

// ---- errors
const ERROR_TEXT = {
  auth: (m) => `Authentication failed: the server refused the API key or client secret (${m}). Enter a valid ` +
    'key, or a fresh client secret, under Settings.',
  full: () => 'The server is full: every session slot is in use. Try again in a moment.',
  unavailable: () => 'The server is not ready yet (still loading the model, or shutting down). Try again shortly.',
  network: (m) => `Could not connect: ${m}`,
  protocol: (m) => m,
  lost: (m) => `Connection lost: ${m}`,
};

function showError(kind, message) {
  const text = (ERROR_TEXT[kind] || ((m) => m))(message);
  demo.error = {kind, message: text};
  demo.errors.push(demo.error);
  $('error-text').textContent = text;
  const retry = $('reconnect');
  retry.hidden = kind === 'denied-insecure';
  retry.textContent = kind === 'lost' ? 'Reconnect' : 'Try again';
  $('banner-error').hidden = false;
  if (kind === 'auth') $('settings').open = true;
}

function clearError() {
  $('banner-error').hidden = true;
  demo.error = null;
}

let toastTimer = null;
function toast(text) {
  let el = document.querySelector('.toast');
  if (!el) {
    el = document.createElement('div');
    el.className = 'toast';
    document.body.append(el);
  }
  el.textContent = text;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.remove(), 4000);
}

// ---- connect / disconnect
async function connect() {
  if (S.state === 'connecting' || S.state === 'connected') return;
  clearError();
  saveSettings();
  const s = settings();
  S.mode = s.mode;
  demo.mode = s.mode;
  setTurnFallback(null); // a new session: the server may take semantic_vad now
  setState('connecting');
  try {
    await audio.start();
    demo.sampleRate = audio.ctx.sampleRate;
    try {
      await audio.openMic(s.micId);
    } catch (e) {
      if (!(e instanceof MicError && e.kind === 'missing' && s.micId)) throw e;
      await audio.openMic(''); // the saved microphone is gone: the default one
    }
    refreshDevices();
    const common = {key: s.key, onEvent, onClose: lost};
    let transport;
    if (s.transport === 'websocket') {
      const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
      transport = new WsTransport({...common, url: `${scheme}//${location.host}/v1/realtime?model=lfm-audio`});
      audio.startWorklets();
    } else {
      transport = new RtcTransport({...common, url: '/v1/realtime/calls', iceServers: iceServers(s.ice),
        micTrack: audio.micTrack, onTrack: playRemote});
    }
    S.transport = transport;
    demo.transport = transport.kind;
    await transport.connect(); // session.created has gone through onEvent
    if (S.items.size) { // a new session: the server remembers nothing of the conversation above
      const li = document.createElement('li');
      li.className = 'divider';
      li.textContent = 'new session';
      $('transcript').append(li);
    }
    updateSession();
    setState('connected');
    applyMic();
    S.timers.push(setInterval(tick, 2000));
    tick();
  } catch (e) {
    teardown();
    if (e instanceof MicError) {
      setState('error', e.kind === 'denied' ? 'No microphone access' : 'No microphone');
      showError(e.kind === 'insecure' ? 'denied-insecure' : 'mic-' + e.kind, e.message);
    } else if (e instanceof Refused) {
      setState('error', {auth: 'Authentication failed', full: 'Server full'}[e.kind]);
      showError(e.kind, e.message);
    } else {
      setState('error');
      showError('protocol', `Unexpected error: ${e.message || e}`);
      throw e;
    }
  }
}

function lost(reason) {
  teardown();
  setState('lost');
  showError('lost', reason);
}

function disconnect() {
  teardown();
  setState('idle');
}

function teardown() {
  S.timers.forEach(clearInterval);
  S.timers = [];
  const t = S.transport;
  S.transport = null;
  if (t) t.close();
  audio.stopWorklets();
  audio.unmeterRemote();
  audio.closeMic();
  if (S.remoteEl) {
    S.remoteEl.srcObject = null;
    S.remoteEl.remove();
    S.remoteEl = null;
  }
  Object.assign(S, {talking: false, userSpeaking: false, response: null, turnEnd: null, speechEnd: null,
    speechStartedAt: null, outMuted: false, playerPlaying: false, rtcPlaying: false, pendingUpdates: []});
  micLevels.clear();
  demo.turnDetection = undefined; // no session, nothing in force
  renderTurnMode();
}

// WebRTC: the remote stream plays through an <audio> element (Chrome's echo canceller sees it there, and
// WebAudio only hears a remote stream that also feeds a media element); WebAudio meters it.
function playRemote(stream) {
  if (!S.remoteEl) {
    S.remoteEl = document.createElement('audio');
    S.remoteEl.autoplay = true;
    S.remoteEl.hidden = true;
    document.body.append(S.remoteEl);
  }
  S.remoteEl.srcObject = stream;
  S.remoteEl.muted = S.outMuted;
  S.remoteEl.play().catch(() => toast('Click the page to allow audio playback.'));
  audio.meterRemote(stream);
}

function send(event) {
  if (!S.transport) return;
  demo.counters.sent[event.type] = (demo.counters.sent[event.type] || 0) + 1;
  S.transport.send(event);
}

let eventSeq = 0;
function updateSession(session = sessionConfig(settings()), rtt = false) {
  const id = `evt_demo_${++eventSeq}`;
  S.pendingUpdates.push({id, rtt, at: now(), turnType: session.audio?.input?.turn_detection?.type ?? null});
  send({type: 'session.update', event_id: id, session});
}

// Every 2 s: the round trip (WebRTC: ICE candidate pair; WebSocket: a no-op session.update when idle).
async function tick() {
  const t = S.transport;
  if (!t || S.state !== 'connected') return;
  if (t.kind === 'webrtc') {
    const rtt = await t.rttMs();
    if (rtt !== null) setRtt(rtt, 'ICE candidate pair');
    // Push-to-talk keeps the track silent between turns, but the server still buffers it: drop it now and then.
    if (S.mode === 'ptt' && !S.talking && !S.response && ++S.idleTicks % 10 === 0) {
      send({type: 'input_audio_buffer.clear'});
    }
  } else if (!S.response && !S.playerPlaying && !S.pendingUpdates.length) {
    updateSession({type: 'realtime'}, true);
  }
}
S.idleTicks = 0;

function setRtt(ms, how) {
  demo.rttMs = ms;
  const value = ms < 1 ? '< 1' : ms < 10 ? ms.toFixed(1) : Math.round(ms);
  $('rtt').textContent = `${value} ms (${how})`;
}

// ---- microphone gating
function applyMic() {
  const track = audio.micTrack;
  if (!track || !S.transport) return;
  const live = !S.muted && (S.mode !== 'ptt' || S.talking);
  track.enabled = live;
  if (S.transport.kind === 'websocket') audio.setCapturing(S.mode !== 'ptt' || S.talking);
  renderTalk();
}

audio.onCapture = (m) => {
  if (!m.pcm || !S.transport) return;
  const bytes = new Uint8Array(m.pcm);
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  send({type: 'input_audio_buffer.append', audio: btoa(bin)});
};

// ---- push to talk
function startTalk() {
  if (S.state !== 'connected' || S.mode !== 'ptt' || S.talking || S.muted) return;
  if (S.response || assistantAudible()) bargeIn('push-to-talk');
  send({type: 'input_audio_buffer.clear'});
  S.talking = true;
  S.talkStart = now();
  applyMic();
}

async function endTalk() {
  if (!S.talking) return;
  S.talking = false;
  const held = now() - S.talkStart;
  const released = now();
  renderTalk();
  if (S.transport.kind === 'websocket') {
    await audio.stopCapture(); // the last partial chunk is sent first
  } else {
    await new Promise((r) => setTimeout(r, 150)); // let the last RTP packets arrive
  }
  applyMic();
  if (!S.transport) return;
  if (held < 250) {
    send({type: 'input_audio_buffer.clear'});
    toast('Hold the button while you talk.');
    return;
  }
  S.turnEnd = released;
  S.speechEnd = released; // the user decides the turn's end: nothing can come before it
  S.spokenMs = held;
  send({type: 'input_audio_buffer.commit'});
  await responseEnded(1500); // an interrupted answer may still be closing
  send({type: 'response.create'});
}

function responseEnded(timeoutMs) {
  const t0 = now();
  return new Promise((resolve) => {
    const check = () => (!S.response || now() - t0 > timeoutMs ? resolve() : setTimeout(check, 20));
    check();
  });
}

// ---- barge-in: stop the assistant's audio at once
async function bargeIn(why) {
  const t0 = now();
  const record = {at: t0, why, transport: S.transport.kind, rmsBefore: maxOut(t0 - 400, t0), stopMs: null,
    rmsAfter: null, remoteAfter: null, truncatedMs: null, item: null};
  demo.counters.bargeIns += 1;
  demo.bargeIns.push(record);
  const r = S.response;
  if (r) S.dropped.add(r.id);
  if (S.transport.kind === 'websocket') {
    if (r && why !== 'speech') send({type: 'response.cancel'}); // on speech, server VAD cancels it by itself
    const f = await audio.flush();
    S.playerPlaying = false;
    if (f.wasPlaying && f.item) {
      // Tell the server what the user actually heard, so the conversation remembers only that.
      record.item = f.item;
      record.truncatedMs = f.playedMs;
      demo.counters.truncates += 1;
      send({type: 'conversation.item.truncate', item_id: f.item, content_index: 0, audio_end_ms: f.playedMs});
    }
  } else {
    S.outMuted = true;
    if (S.remoteEl) S.remoteEl.muted = true;
    send({type: 'output_audio_buffer.clear'}); // the server drops what it still has queued
  }
  record.stopMs = now() - t0;
  setTimeout(() => {
    record.rmsAfter = maxOut(t0 + 100, t0 + 600);
    record.remoteAfter = record.transport === 'webrtc' ? maxRemote(t0 + 300, t0 + 800) : record.rmsAfter;
  }, 850);
  renderTalk();
}

function maxOut(a, b) {
  let m = 0;
  for (const [t, v] of history.out) if (t >= a && t <= b) m = Math.max(m, v);
  return m;
}

function maxRemote(a, b) {
  let m = 0;
  for (const [t, , v] of history.out) if (t >= a && t <= b) m = Math.max(m, v);
  return m;
}

// ---- levels
audio.onMicLevel = ({rms}) => {
  micLevels.push(now(), rms);
  demo.rms.mic = rms;
  demo.rms.micMax = Math.max(demo.rms.micMax, rms);
};

audio.onOutLevel = ({rms}) => {
  // WebSocket: the player's output. WebRTC: the remote stream, audible unless muted by a barge-in.
  const remote = S.transport?.kind === 'webrtc' ? rms : 0;
  const audible = S.transport?.kind === 'webrtc' && S.outMuted ? 0 : rms;
  const t = now();
  demo.rms.out = audible;
  demo.rms.outMax = Math.max(demo.rms.outMax, audible);
  demo.rms.remote = remote;
  demo.rms.remoteMax = Math.max(demo.rms.remoteMax, remote);
  history.out.push([t, audible, remote]);
  while (history.out.length && history.out[0][0] < t - 3000) history.out.shift();
  if (audible > AUDIBLE) {
    S.lastAudible = t;
    const r = S.response || lastTurn();
    if (r && !r.firstAudioAt && S.transport?.kind === 'webrtc' && !S.dropped.has(r.id)) {
      r.firstAudioAt = t;
      finishTtfa(r);
    }
    if (r) r.outRmsMax = Math.max(r.outRmsMax, audible);
  }
};

audio.onPlayer = (m) => {
  S.playerPlaying = m.playing;
  renderTalk();
};

function drawMeters() {
  const width = (rms) => `${Math.max(0, Math.min(100, (20 * Math.log10(rms + 1e-9) + 60) / 60 * 100))}%`;
  $('mic-level').style.width = width(S.transport ? demo.rms.mic : 0);
  $('out-level').style.width = width(S.transport ? demo.rms.out : 0);
  if (S.state === 'connected') renderTalk();
  requestAnimationFrame(drawMeters);
}

// ---- server events
function onEvent(e) {
  const c = demo.counters;
  c.events[e.type] = (c.events[e.type] || 0) + 1;
  if (e.type !== 'response.output_audio.delta') {
    demo.log.push([Math.round(now()), e.type, e.response_id || e.item_id || '']);
    if (demo.log.length > 300) demo.log.shift();
  }
  switch (e.type) {
    case 'session.created':
      demo.sessionId = e.session.id;
      showTurnDetection(e.session);
      $('footer').textContent = `Session ${e.session.id} over ${S.transport.kind === 'webrtc' ? 'WebRTC' :
        'WebSocket'} · audio at ${audio.ctx.sampleRate} Hz in this browser · model ${e.session.model || '?'}`;
      break;
    case 'session.updated': {
      const p = S.pendingUpdates.shift();
      if (p?.rtt) setRtt(now() - p.at, 'WebSocket, session.update');
      showTurnDetection(e.session);
      break;
    }
    case 'input_audio_buffer.speech_started':
      S.userSpeaking = true;
      S.speechStartMs = e.audio_start_ms;
      S.speechStartedAt = now();
      if (S.response || assistantAudible()) bargeIn('speech');
      break;
    case 'input_audio_buffer.speech_stopped':
      S.userSpeaking = false;
      S.turnEnd = now();
      // The speech began before speech_started could say so (the detector needs voiced frames first).
      S.speechEnd = micLevels.find(S.speechStartedAt === null ? null : S.speechStartedAt - SPEECH_LEAD_MS);
      S.spokenMs = e.audio_end_ms - (S.speechStartMs ?? e.audio_end_ms);
      break;
    case 'input_audio_buffer.committed':
      entry(e.item_id, 'user', S.spokenMs);
      S.spokenMs = null;
      break;
    case 'conversation.item.input_audio_transcription.delta':
      entry(e.item_id, 'user').append(e.delta);
      break;
    case 'conversation.item.input_audio_transcription.completed':
      entry(e.item_id, 'user').set(e.transcript || '(nothing recognised)');
      break;
    case 'conversation.item.input_audio_transcription.failed':
      entry(e.item_id, 'user').set('(transcription failed)');
      break;
    case 'response.created': {
      c.responses += 1;
      const r = {n: c.responses, id: e.response.id, item: null, createdAt: now(), turnEndAt: S.turnEnd,
        speechEndAt: S.turnEnd === null ? null : S.speechEnd, firstAudioAt: null, bufferStartedAt: null,
        doneAt: null, ttfaMs: null, speechToAudioMs: null, rtf: null, audioMs: null, status: 'in_progress',
        outRmsMax: 0, bytes: 0, row: null};
      S.turnEnd = null;
      S.speechEnd = null;
      S.response = r;
      demo.turns.push(r);
      if (S.outMuted) { // a new answer after a barge-in: audible again
        S.outMuted = false;
        if (S.remoteEl) S.remoteEl.muted = false;
      }
      renderLatency(r);
      break;
    }
    case 'response.output_item.added':
      if (S.response && e.response_id === S.response.id) S.response.item = e.item.id;
      entry(e.item.id, 'assistant');
      break;
    case 'response.output_audio_transcript.delta':
    case 'response.output_text.delta':
      entry(e.item_id, 'assistant').append(e.delta);
      break;
    case 'response.output_audio.delta':
      onAudioDelta(e);
      break;
    case 'response.done':
      onResponseDone(e.response);
      break;
    case 'output_audio_buffer.started': {
      S.rtcPlaying = true;
      const r = demo.turns.find((t) => t.id === e.response_id);
      if (r) r.bufferStartedAt = now(); // the server began sending it; the panel waits for it to be heard
      break;
    }
      break;
    case 'output_audio_buffer.stopped':
      S.rtcPlaying = false;
      break;
    case 'output_audio_buffer.cleared': // WebRTC: what was still queued of that answer was dropped
      S.rtcPlaying = false;
      markInterrupted(demo.turns.find((t) => t.id === e.response_id)?.item);
      break;
    case 'conversation.item.truncated':
      markInterrupted(e.item_id);
      break;
    case 'error':
      onServerError(e.error);
      break;
    default:
  }
}

function onAudioDelta(e) {
  const r = S.response;
  if (S.dropped.has(e.response_id) || !r || r.id !== e.response_id) return;
  const bin = atob(e.delta);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  demo.counters.audioDeltas += 1;
  demo.counters.audioBytes += bytes.length;
  r.bytes += bytes.length;
  if (!r.firstAudioAt) {
    r.firstAudioAt = now();
    finishTtfa(r);
  }
  audio.play(bytes.buffer, e.item_id);
}

function finishTtfa(r) {
  if (r.turnEndAt) r.ttfaMs = r.firstAudioAt - r.turnEndAt;
  if (r.speechEndAt) r.speechToAudioMs = r.firstAudioAt - r.speechEndAt;
  renderLatency(r);
}

function onResponseDone(resp) {
  const r = demo.turns.find((t) => t.id === resp.id);
  if (!r) return;
  r.doneAt = now();
  r.status = resp.status;
  const audioS = (resp.usage?.output_token_details?.audio_tokens || 0) * FRAME_S; // the server always counts them
  r.audioMs = Math.round(audioS * 1000);
  if (audioS > 0) r.rtf = (r.doneAt - r.createdAt) / 1000 / audioS;
  if (S.response === r) S.response = null;
  if (resp.status === 'cancelled') markInterrupted(r.item);
  renderLatency(r);
}

function markInterrupted(itemId) {
  S.items.get(itemId)?.li.classList.add('interrupted');
}

function onServerError(error) {
  const quiet = new Set(['response_cancel_not_active', 'input_audio_buffer_commit_empty']);
  demo.errors.push({kind: 'server', code: error.code, message: error.message, param: error.param ?? null});
  const i = S.pendingUpdates.findIndex((p) => p.id === error.event_id);
  const update = i >= 0 ? S.pendingUpdates.splice(i, 1)[0] : null;
  if (!quiet.has(error.code)) toast(`Server: ${error.message}`);
  if (update?.turnType === 'semantic_vad' && S.turnFallback === null && refusesTurnDetection(error)) {
    setTurnFallback(error.message); // this server has no semantic_vad: hands-free with server VAD instead
    updateSession();
  }
}

// ---- turn detection in force
function showTurnDetection(session) {
  const td = session?.audio?.input?.turn_detection;
  if (td === undefined) return; // e.g. a transcription session's fields elsewhere: keep what is shown
  demo.turnDetection = td;
  renderTurnMode();
}

function setTurnFallback(message) {
  S.turnFallback = message;
  demo.turnFallback = message;
  renderTurnMode();
}

function renderTurnMode() {
  const el = $('turn-mode');
  el.textContent = demo.turnDetection === undefined ? '' : `In force: ${describe(demo.turnDetection)}`;
  const note = $('turn-fallback');
  note.hidden = S.turnFallback === null;
  note.textContent = S.turnFallback === null ? '' : `The server refused semantic VAD (${S.turnFallback}); ` +
    'using server VAD for this session.';
}

// ---- transcript
function entry(itemId, role, spokenMs = null) {
  let e = S.items.get(itemId);
  if (e) return e;
  const li = document.createElement('li');
  li.className = role;
  li.dataset.role = role;
  li.dataset.item = itemId;
  li.innerHTML = `<span class="who">${role === 'user' ? 'You' : 'Assistant'}</span><span class="text"></span>`;
  const text = li.querySelector('.text');
  const placeholder = document.createElement('span');
  placeholder.className = 'placeholder';
  const spoken = spokenMs ? `spoken, ${(spokenMs / 1000).toFixed(1)} s` : 'spoken';
  placeholder.textContent = role === 'user' ? (settings().transcribe ? `(${spoken}: transcribing…)` : `(${spoken})`)
    : '…';
  text.append(placeholder);
  $('transcript').append(li);
  $('transcript-empty').hidden = true;
  e = {
    li,
    fresh: true,
    append(delta) {
      if (this.fresh) {
        text.textContent = '';
        this.fresh = false;
      }
      text.textContent += delta;
      li.scrollIntoView({block: 'nearest'});
    },
    set(value) {
      text.textContent = value;
      this.fresh = false;
    },
  };
  S.items.set(itemId, e);
  return e;
}

// ---- latency panel
function renderLatency(r) {
  const body = $('latency').tBodies[0];
  if (!r.row) {
    r.row = body.insertRow(0);
    for (let i = 0; i < 5; i++) r.row.insertCell();
    while (body.rows.length > 6) body.deleteRow(body.rows.length - 1);
  }
  const cells = r.row.cells;
  cells[0].textContent = `#${r.n}`;
  const ms = (v) => (v === null ? '…' : `${Math.round(v)} ms`);
  cells[1].textContent = r.turnEndAt && !r.speechEndAt ? '–' : ms(r.speechToAudioMs); // –: no speech heard here
  cells[2].textContent = ms(r.ttfaMs);
  cells[3].textContent = r.rtf === null ? '…' : r.rtf.toFixed(2);
  cells[4].textContent = r.audioMs === null ? '…' : `${(r.audioMs / 1000).toFixed(1)} s`;
  r.row.className = r.status === 'cancelled' ? 'cancelled' : '';
  r.row.title = r.status;
}

function lastTurn() {
  return demo.turns[demo.turns.length - 1] || null;
}

// ---- server status
async function checkServer() {
  try {
    const res = await fetch('/readyz', {cache: 'no-store'});
    const body = await res.json();
    demo.readyz = body;
    $('model-name').textContent = body.model || '?';
    $('banner-random').hidden = !body.random_weights;
    const info = $('banner-server');
    if (res.ok) {
      info.hidden = true;
    } else {
      info.hidden = false;
      info.textContent = 'The server is starting (loading and warming up the model)…';
      setTimeout(checkServer, 2000);
    }
  } catch {
    setTimeout(checkServer, 5000);
  }
}

// ---- microphones
async function refreshDevices() {
  const select = form.elements.mic;
  const current = select.value;
  const devices = await AudioEngine.devices();
  select.length = 1;
  for (const d of devices) {
    if (!d.deviceId || d.deviceId === 'default') continue;
    select.add(new Option(d.label || `Microphone ${select.length}`, d.deviceId));
  }
  const wanted = S.wantedMic || current;
  select.value = [...select.options].some((o) => o.value === wanted) ? wanted : '';
}

async function switchMic() {
  S.wantedMic = form.elements.mic.value;
  saveSettings();
  if (S.state !== 'connected') return;
  try {
    await audio.openMic(form.elements.mic.value);
    if (S.transport.kind === 'webrtc') await S.transport.replaceMic(audio.micTrack);
    applyMic();
  } catch (e) {
    toast(e.message);
  }
}

// ---- wiring
function init() {
  loadSettings();
  S.mode = settings().mode;
  const talk = $('talk');
  talk.addEventListener('pointerdown', (e) => {
    if (S.state !== 'connected') return;
    if (S.mode === 'ptt') {
      talk.setPointerCapture(e.pointerId);
      startTalk();
    }
  });
  for (const type of ['pointerup', 'pointercancel', 'lostpointercapture']) talk.addEventListener(type, endTalk);
  talk.addEventListener('click', () => {
    if (S.state === 'idle' || S.state === 'error' || S.state === 'lost') connect();
    else if (S.state === 'connected' && S.mode !== 'ptt' && (S.response || assistantAudible())) bargeIn('button');
  });
  const typing = (e) => e.target.closest('input, textarea, select, [contenteditable]');
  document.addEventListener('keydown', (e) => {
    if (e.code === 'Space' && !e.repeat && !typing(e) && S.mode === 'ptt' && S.state === 'connected') {
      e.preventDefault();
      startTalk();
    }
  });
  document.addEventListener('keyup', (e) => {
    if (e.code === 'Space' && !typing(e)) endTalk();
  });
  $('mute').addEventListener('click', () => {
    S.muted = !S.muted;
    $('mute').setAttribute('aria-pressed', String(S.muted));
    $('mute').textContent = S.muted ? 'Unmute mic' : 'Mute mic';
    applyMic();
  });
  $('disconnect').addEventListener('click', disconnect);
  $('reconnect').addEventListener('click', () => {
    clearError();
    setState('idle');
    connect();
  });
  for (const radio of document.querySelectorAll('input[name=mode]')) {
    radio.addEventListener('change', () => {
      S.mode = settings().mode;
      demo.mode = S.mode;
      saveSettings();
      if (S.state === 'connected') {
        updateSession();
        applyMic();
      }
    });
  }
  form.addEventListener('change', (e) => {
    if (e.target.name === 'mic') return switchMic();
    saveSettings();
    if (S.state === 'connected' && ['transport', 'key', 'ice'].includes(e.target.name)) {
      toast('Disconnect and start again to use this setting.');
    }
    if (S.state === 'connected' && e.target.name !== 'transport' && e.target.name !== 'key' &&
        e.target.name !== 'ice') {
      updateSession();
    }
    return undefined;
  });
  form.addEventListener('submit', (e) => e.preventDefault());
  navigator.mediaDevices?.addEventListener?.('devicechange', refreshDevices);
  setState('idle');
  refreshDevices(); // ids (and labels, once allowed) of the microphones
  checkServer();
  requestAnimationFrame(drawMeters);
}

init();
