// AudioWorklet processors for the demo: microphone capture (any rate -> 24 kHz pcm16), playback of 24 kHz
// deltas (-> the context's rate), and a level meter. `sampleRate` is the AudioContext's rate (44.1 kHz on a
// machine without a sound card, 48 kHz on most others): never assume one.

const WIRE_RATE = 24000; // OpenAI's audio/pcm (mirrors WIRE_RATE in models/defaults.py)

// Streaming windowed-sinc resampler (Hann window, 16 taps each side). Low-passes below the lower Nyquist,
// so 48 kHz -> 24 kHz does not alias and 24 kHz -> 44.1 kHz does not image.
class Resampler {
  constructor(inRate, outRate, half = 16, oversample = 64) {
    this.step = inRate / outRate; // input samples per output sample
    this.half = half;
    this.over = oversample;
    const cut = Math.min(1, outRate / inRate) * 0.94; // cutoff, relative to the input Nyquist
    this.table = new Float32Array(half * oversample + 2);
    for (let i = 0; i < this.table.length; i++) {
      const d = i / oversample;
      const x = Math.PI * cut * d;
      const sinc = d === 0 ? 1 : Math.sin(x) / x;
      const win = d < half ? 0.5 * (1 + Math.cos(Math.PI * d / half)) : 0;
      this.table[i] = cut * sinc * win;
    }
    this.reset();
  }

  reset() {
    this.buf = new Float32Array(this.half); // history: zeros
    this.pos = this.half; // where the next output sits, in buf coordinates
  }

  kernel(d) {
    const f = Math.abs(d) * this.over;
    const i = f | 0;
    if (i >= this.table.length - 1) return 0;
    return this.table[i] + (this.table[i + 1] - this.table[i]) * (f - i);
  }

  push(input) {
    const buf = new Float32Array(this.buf.length + input.length);
    buf.set(this.buf);
    buf.set(input, this.buf.length);
    const out = new Float32Array(Math.ceil(input.length / this.step) + 2);
    let n = 0;
    let t = this.pos;
    const h = this.half;
    while (Math.floor(t) + h < buf.length && n < out.length) {
      const k0 = Math.floor(t);
      let y = 0;
      for (let k = k0 - h + 1; k <= k0 + h; k++) y += buf[k] * this.kernel(t - k);
      out[n++] = y;
      t += this.step;
    }
    const keep = Math.max(0, Math.floor(t) - h + 1);
    this.buf = buf.slice(keep);
    this.pos = t - keep;
    return out.subarray(0, n);
  }
}

// Mic -> 24 kHz pcm16 in 40 ms chunks, posted to the main thread while `on`.
// {on: false} stops it; the partial chunk goes out first, then {stopped: true}.
class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.rs = new Resampler(sampleRate, WIRE_RATE);
    this.chunk = new Int16Array(WIRE_RATE / 25); // 40 ms
    this.n = 0;
    this.on = false;
    this.port.onmessage = (e) => {
      if (e.data.on === true && !this.on) {
        this.rs.reset();
        this.on = true;
      } else if (e.data.on === false) {
        if (this.on) this.post(true);
        this.on = false;
        this.port.postMessage({stopped: true});
      }
    };
  }

  post(partial) {
    if (this.n === 0) return;
    const data = partial ? this.chunk.slice(0, this.n) : this.chunk;
    this.port.postMessage({pcm: data.buffer}, [data.buffer]);
    this.chunk = new Int16Array(WIRE_RATE / 25);
    this.n = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!this.on || !channels || channels.length === 0) return true;
    let x = channels[0];
    if (channels.length > 1) {
      x = new Float32Array(x.length);
      for (const c of channels) for (let i = 0; i < x.length; i++) x[i] += c[i] / channels.length;
    }
    for (const v of this.rs.push(x)) {
      this.chunk[this.n++] = Math.max(-32768, Math.min(32767, Math.round(v * 32767)));
      if (this.n === this.chunk.length) this.post(false);
    }
    return true;
  }
}

// Plays 24 kHz chunks {pcm: Int16Array buffer, item}, resampled to the context rate. Reports what it
// actually played per item, so that a barge-in can tell the server how much the user heard.
// {flush: true} drops everything queued and answers {flushed: true, item, playedMs}.
class Player extends AudioWorkletProcessor {
  constructor() {
    super();
    this.rs = new Resampler(WIRE_RATE, sampleRate);
    this.queue = []; // {data: Float32Array at sampleRate, item}
    this.offset = 0;
    this.item = null; // the item now playing (or last played)
    this.played = 0; // samples of this.item played, at sampleRate
    this.playing = false;
    this.blocks = 0;
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.pcm) {
        const pcm = new Int16Array(m.pcm);
        const f = new Float32Array(pcm.length);
        for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
        const data = this.rs.push(f);
        if (data.length) this.queue.push({data, item: m.item});
      } else if (m.flush) {
        const wasPlaying = this.playing || this.queue.length > 0;
        this.queue = [];
        this.offset = 0;
        this.rs.reset();
        this.playing = false;
        this.port.postMessage({flushed: true, wasPlaying, item: this.item, playedMs: this.ms()});
      }
    };
  }

  ms() {
    return Math.round(1000 * this.played / sampleRate);
  }

  queuedMs() {
    let n = -this.offset;
    for (const c of this.queue) n += c.data.length;
    return Math.round(1000 * n / sampleRate);
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    const first = out[0];
    let i = 0;
    while (i < first.length && this.queue.length) {
      const c = this.queue[0];
      if (c.item !== this.item) {
        this.item = c.item;
        this.played = 0;
      }
      const n = Math.min(first.length - i, c.data.length - this.offset);
      first.set(c.data.subarray(this.offset, this.offset + n), i);
      i += n;
      this.offset += n;
      this.played += n;
      if (this.offset === c.data.length) {
        this.queue.shift();
        this.offset = 0;
      }
    }
    first.fill(0, i);
    for (let c = 1; c < out.length; c++) out[c].set(first);
    const playing = i > 0;
    if (playing !== this.playing || (playing && ++this.blocks % 16 === 0)) {
      this.playing = playing;
      this.port.postMessage({playing, item: this.item, playedMs: this.ms(), queuedMs: this.queuedMs()});
    }
    return true;
  }
}

// RMS and peak of its input, posted about every 23 ms (8 render quanta).
class Meter extends AudioWorkletProcessor {
  constructor() {
    super();
    this.sum = 0;
    this.n = 0;
    this.peak = 0;
    this.blocks = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length) {
      const x = channels[0];
      for (let i = 0; i < x.length; i++) {
        this.sum += x[i] * x[i];
        const a = Math.abs(x[i]);
        if (a > this.peak) this.peak = a;
      }
      this.n += x.length;
    } else {
      this.n += 128; // no input connected: silence
    }
    if (++this.blocks === 8) {
      this.port.postMessage({rms: Math.sqrt(this.sum / Math.max(1, this.n)), peak: this.peak});
      this.sum = 0;
      this.n = 0;
      this.peak = 0;
      this.blocks = 0;
    }
    return true;
  }
}

registerProcessor('lfm-capture', Capture);
registerProcessor('lfm-player', Player);
registerProcessor('lfm-meter', Meter);
