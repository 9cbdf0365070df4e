// How the demo's turns end: the turn_detection each mode asks for, how the page describes what the server put in
// force, and where the user's speech ended (for the latency panel's "speech end -> audio").

// The "How turns end" radio values (also ?mode=): push to talk, server VAD (a fixed silence ends the turn),
// semantic VAD (the server's end-of-turn model decides, by eagerness).
export const MODES = ['ptt', 'vad', 'semantic'];
const OPTIONS = {create_response: true, interrupt_response: true};

// fallback: the server refused semantic_vad in this session, so hands-free falls back to server_vad.
export function turnDetection(s, fallback) {
  if (s.mode === 'ptt') return null;
  if (s.mode === 'semantic' && !fallback) return {type: 'semantic_vad', eagerness: s.eagerness, ...OPTIONS};
  return {type: 'server_vad', silence_duration_ms: s.vadSilenceMs, ...OPTIONS};
}

// The server's session.audio.input.turn_detection, in words.
export function describe(td) {
  if (td === undefined) return '–';
  if (td === null) return 'manual turns (push to talk)';
  if (td.type === 'semantic_vad') return `semantic VAD, eagerness ${td.eagerness ?? 'auto'}`;
  if (td.type === 'server_vad') return `server VAD, ${td.silence_duration_ms} ms of silence`;
  return String(td.type);
}

// An error answering a session.update that asked for semantic_vad: is it the turn detection it refuses?
// (A server without a param is taken at its word for the whole update: falling back once costs nothing.)
export function refusesTurnDetection(error) {
  return !error.param || error.param.includes('turn_detection');
}

// Where the user's speech ended, on this page's clock, from the local microphone level: the last meter reading
// within SPEECH_DB of the loudest one since the speech began.
//
// Why not speech_stopped's audio_end_ms mapped to when that audio was sent: this server (streaming/vad.py,
// SpeechStopped) reports there where it *declared* the stop, i.e. the last speech plus the silence it waited
// (server_vad's silence_duration_ms, or semantic_vad's model-chosen wait), so it would hide exactly the wait this
// column is meant to show; and on WebRTC the page does not see how much of its Opus track the server has decoded.
// The mic level is what the user did, on either transport. It reads up to one meter period (about 23 ms) late,
// and a trailing sound more than SPEECH_DB below the loudest counts as silence.
const SPEECH_DB = 20; // below the turn's loudest: silence (well above a quiet room, under the noise suppressor)
const FLOOR_RMS = 1e-3; // a turn never louder than this was no speech (a muted or dead mic)
const KEEP_MS = 15000; // longer turns are judged on their last 15 s

export class SpeechEnd {
  constructor() {
    this.levels = []; // [t, rms] of the mic meter
  }

  push(t, rms) {
    this.levels.push([t, rms]);
    while (this.levels[0][0] < t - KEEP_MS) this.levels.shift();
  }

  // The end of the speech that began at or after `since` (ms; null: anything kept), or null if none was heard.
  find(since) {
    const levels = since === null ? this.levels : this.levels.filter(([t]) => t >= since);
    const peak = Math.max(0, ...levels.map(([, rms]) => rms));
    if (peak < FLOOR_RMS) return null;
    const loud = peak * 10 ** (-SPEECH_DB / 20);
    for (let i = levels.length - 1; i >= 0; i--) if (levels[i][1] >= loud) return levels[i][0];
    return null;
  }

  clear() {
    this.levels = [];
  }
}
