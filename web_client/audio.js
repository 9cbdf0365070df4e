// Browser audio: one AudioContext, the microphone (with echo cancellation, noise suppression and auto gain),
// level meters, and for the WebSocket transport the capture and playback worklets.

export class MicError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind; // denied | missing | insecure | busy | other
  }
}

export class AudioEngine {
  constructor() {
    this.ctx = null;
    this.mic = null; // MediaStream
    this.micSource = null;
    this.capture = null; // AudioWorkletNode (WebSocket only)
    this.player = null; // AudioWorkletNode (WebSocket only)
    this.sink = null; // a muted GainNode to ctx.destination: pulls the meters and the capture node
    this.onMicLevel = () => {};
    this.onOutLevel = () => {};
    this.onPlayer = () => {};
    this.onCapture = () => {};
    this.remote = null; // {source, meter} of the WebRTC remote stream
  }

  async start() {
    if (!this.ctx) {
      this.ctx = new AudioContext({latencyHint: 'interactive'});
      await this.ctx.audioWorklet.addModule(new URL('./worklets.js', import.meta.url));
      this.sink = this.ctx.createGain();
      this.sink.gain.value = 0;
      this.sink.connect(this.ctx.destination);
      this.micMeter = this.meter((m) => this.onMicLevel(m));
      this.outMeter = this.meter((m) => this.onOutLevel(m));
    }
    if (this.ctx.state !== 'running') await this.ctx.resume();
  }

  meter(onLevel) {
    const node = new AudioWorkletNode(this.ctx, 'lfm-meter', {numberOfOutputs: 1});
    node.port.onmessage = (e) => onLevel(e.data);
    node.connect(this.sink);
    return node;
  }

  static async devices() {
    if (!navigator.mediaDevices?.enumerateDevices) return [];
    return (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'audioinput');
  }

  async openMic(deviceId) {
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
      throw new MicError('insecure', 'The microphone needs a secure page: open the demo over https, or at ' +
        'http://localhost / http://127.0.0.1 on this machine.');
    }
    const audio = {echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1};
    if (deviceId) audio.deviceId = {exact: deviceId};
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({audio});
    } catch (e) {
      if (e.name === 'NotAllowedError' || e.name === 'SecurityError') {
        throw new MicError('denied', 'Microphone access was denied. Allow the microphone for this page (the ' +
          'icon in the address bar or the site settings), then press Reconnect.');
      }
      if (e.name === 'NotFoundError' || e.name === 'OverconstrainedError') {
        throw new MicError('missing', 'No microphone was found' + (deviceId ? ' (the selected one is gone)' : '') +
          '. Plug one in or pick another in Settings.');
      }
      if (e.name === 'NotReadableError') {
        throw new MicError('busy', 'The microphone is in use by another program or could not be opened.');
      }
      throw new MicError('other', `Could not open the microphone: ${e.name}: ${e.message}`);
    }
    this.closeMic();
    this.mic = stream;
    this.micSource = this.ctx.createMediaStreamSource(stream);
    this.micSource.connect(this.micMeter);
    if (this.capture) this.micSource.connect(this.capture);
    return stream;
  }

  get micTrack() {
    return this.mic ? this.mic.getAudioTracks()[0] : null;
  }

  closeMic() {
    if (this.micSource) this.micSource.disconnect();
    if (this.mic) this.mic.getTracks().forEach((t) => t.stop());
    this.mic = null;
    this.micSource = null;
  }

  // ---- WebSocket: capture and playback in worklets
  startWorklets() {
    if (!this.capture) {
      this.capture = new AudioWorkletNode(this.ctx, 'lfm-capture', {numberOfOutputs: 1});
      this.capture.port.onmessage = (e) => this.onCapture(e.data);
      this.capture.connect(this.sink);
      if (this.micSource) this.micSource.connect(this.capture);
    }
    if (!this.player) {
      this.player = new AudioWorkletNode(this.ctx, 'lfm-player', {numberOfInputs: 0, outputChannelCount: [1]});
      this.player.port.onmessage = (e) => {
        if (e.data.flushed) this.flushed?.(e.data);
        else this.onPlayer(e.data);
      };
      this.player.connect(this.ctx.destination);
      this.player.connect(this.outMeter);
    }
  }

  stopWorklets() {
    for (const node of [this.capture, this.player]) node?.disconnect();
    this.capture = null;
    this.player = null;
  }

  setCapturing(on) {
    this.capture?.port.postMessage({on});
  }

  // Stop capturing; resolves once the last partial chunk has been posted.
  stopCapture() {
    if (!this.capture) return Promise.resolve();
    return new Promise((resolve) => {
      const node = this.capture;
      const prev = node.port.onmessage;
      node.port.onmessage = (e) => {
        if (e.data.stopped) {
          node.port.onmessage = prev;
          resolve();
        } else prev(e);
      };
      node.port.postMessage({on: false});
    });
  }

  play(pcm16Buffer, item) {
    this.player?.port.postMessage({pcm: pcm16Buffer, item}, [pcm16Buffer]);
  }

  // Drop all queued playback at once; resolves with {wasPlaying, item, playedMs}.
  flush() {
    if (!this.player) return Promise.resolve({wasPlaying: false, item: null, playedMs: 0});
    return new Promise((resolve) => {
      this.flushed = (m) => {
        this.flushed = null;
        resolve(m);
      };
      this.player.port.postMessage({flush: true});
    });
  }

  // ---- WebRTC: meter the remote stream (it plays through an <audio> element, where Chrome's echo
  // canceller can see it; WebAudio only measures it)
  meterRemote(stream) {
    this.unmeterRemote();
    const source = this.ctx.createMediaStreamSource(stream);
    source.connect(this.outMeter);
    this.remote = source;
  }

  unmeterRemote() {
    this.remote?.disconnect();
    this.remote = null;
  }
}
