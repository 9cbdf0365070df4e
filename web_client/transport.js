// The two ways to reach the server's OpenAI Realtime session: WebRTC (audio as media tracks, events on the
// "oai-events" data channel) and WebSocket (events as JSON text frames, audio inside them as base64 pcm16).

// Why a connection could not be made: kind is auth | full | unavailable | network | protocol.
export class Refused extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

const REFUSALS = {invalid_api_key: 'auth', server_full: 'full', server_unavailable: 'unavailable'};
const CONNECT_TIMEOUT_MS = 15000;

function refusalFromError(error) {
  const kind = REFUSALS[error?.code];
  return kind ? new Refused(kind, error.message || error.code) : null;
}

class Base {
  constructor({onEvent, onClose}) {
    this.onEvent = onEvent;
    this.onClose = onClose; // called once with a reason when the connection ends without close()
    this.closing = false;
    this.created = null;
  }

  // Resolves with session.created, rejects with Refused.
  waitCreated() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Refused('network', 'The server did not start a session in time.')),
        CONNECT_TIMEOUT_MS);
      this.created = {resolve: (e) => { clearTimeout(timer); resolve(e); },
                      reject: (e) => { clearTimeout(timer); reject(e); }};
    });
  }

  dispatch(event) {
    if (this.created) {
      if (event.type === 'session.created') {
        const c = this.created;
        this.created = null;
        c.resolve(event);
      } else if (event.type === 'error' && refusalFromError(event.error)) {
        const c = this.created;
        this.created = null;
        this.refused = true;
        c.reject(refusalFromError(event.error));
        return;
      }
    }
    this.onEvent(event);
  }

  ended(reason) {
    if (this.created) {
      const c = this.created;
      this.created = null;
      c.reject(new Refused('network', reason));
      return;
    }
    if (!this.closing && !this.refused) {
      this.closing = true;
      this.onClose(reason);
    }
  }
}

export class WsTransport extends Base {
  constructor({url, key, onEvent, onClose}) {
    super({onEvent, onClose});
    this.kind = 'websocket';
    this.url = url;
    this.key = key;
  }

  async connect() {
    const protocols = ['realtime'];
    if (this.key) protocols.push('openai-insecure-api-key.' + this.key);
    try {
      this.ws = new WebSocket(this.url, protocols);
    } catch (e) {
      throw new Refused('auth', `This key cannot be sent over a WebSocket (${e.message}).`);
    }
    const created = this.waitCreated();
    this.ws.onmessage = (e) => {
      if (typeof e.data === 'string') this.dispatch(JSON.parse(e.data));
    };
    this.ws.onclose = (e) => this.ended(closeReason(e));
    return created;
  }

  get open() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  send(event) {
    if (this.open) this.ws.send(JSON.stringify(event));
  }

  close() {
    this.closing = true;
    this.ws?.close(1000, 'bye');
  }
}

const CLOSE_CODES = {
  1001: 'the server is going away', 1006: 'could not reach the server, or the network dropped',
  1008: 'refused by the server', 1011: 'the session failed on the server', 1012: 'the server restarted or shut down',
  1013: 'the server is overloaded, try again later',
};

function closeReason(e) {
  const why = CLOSE_CODES[e.code] || 'the server closed the connection';
  return `${why[0].toUpperCase()}${why.slice(1)} (WebSocket close ${e.code}${e.reason ? ': ' + e.reason : ''}).`;
}

function iceGathered(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === 'complete') {
        pc.removeEventListener('icegatheringstatechange', done);
        clearTimeout(timer);
        resolve();
      }
    };
    const timer = setTimeout(() => {
      pc.removeEventListener('icegatheringstatechange', done);
      resolve();
    }, timeoutMs);
    pc.addEventListener('icegatheringstatechange', done);
  });
}

// OpenAI's WebRTC flow: POST the SDP offer to /v1/realtime/calls, get the SDP answer back.
export class RtcTransport extends Base {
  constructor({url, key, iceServers, micTrack, onEvent, onClose, onTrack}) {
    super({onEvent, onClose});
    this.kind = 'webrtc';
    this.url = url;
    this.key = key;
    this.iceServers = iceServers || [];
    this.micTrack = micTrack;
    this.onTrack = onTrack;
  }

  async connect() {
    // No STUN/TURN unless the user configured some: never a public server by default.
    const pc = new RTCPeerConnection({iceServers: this.iceServers});
    this.pc = pc;
    this.sender = pc.addTrack(this.micTrack, new MediaStream([this.micTrack]));
    pc.ontrack = (e) => this.onTrack(e.streams[0] || new MediaStream([e.track]));
    const dc = pc.createDataChannel('oai-events');
    this.dc = dc;
    dc.onmessage = (e) => this.dispatch(JSON.parse(e.data));
    dc.onclose = () => this.ended('The connection to the server was lost.');
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed') this.ended('The WebRTC connection failed.');
    };
    const created = this.waitCreated();
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc, 3000); // the server does not trickle: send every candidate in the offer
    const headers = {'Content-Type': 'application/sdp'};
    if (this.key) headers.Authorization = 'Bearer ' + this.key;
    let response;
    try {
      response = await fetch(this.url, {method: 'POST', body: pc.localDescription.sdp, headers});
    } catch (e) {
      this.abort();
      throw new Refused('network', `Could not reach the server (${e.message}).`);
    }
    if (!response.ok) {
      this.abort();
      throw await httpRefusal(response);
    }
    await pc.setRemoteDescription({type: 'answer', sdp: await response.text()});
    return created;
  }

  abort() {
    this.created = null;
    this.closing = true;
    this.pc?.close();
  }

  get open() {
    return this.dc?.readyState === 'open';
  }

  send(event) {
    if (this.open) this.dc.send(JSON.stringify(event));
  }

  replaceMic(track) {
    this.micTrack = track;
    return this.sender?.replaceTrack(track);
  }

  // Round trip of the selected ICE candidate pair, in ms (null until known).
  async rttMs() {
    if (!this.pc) return null;
    const stats = await this.pc.getStats();
    let pairId = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    });
    let best = null;
    stats.forEach((s) => {
      if (s.type !== 'candidate-pair') return;
      if (pairId ? s.id !== pairId : !(s.nominated && s.state === 'succeeded')) return;
      if (typeof s.currentRoundTripTime === 'number') best = s.currentRoundTripTime * 1000;
      else if (s.responsesReceived > 0 && s.totalRoundTripTime) best = 1000 * s.totalRoundTripTime / s.responsesReceived;
    });
    return best;
  }

  close() {
    this.closing = true;
    try {
      this.dc?.close();
    } finally {
      this.pc?.close();
    }
  }
}

async function httpRefusal(response) {
  let error = null;
  try {
    const body = await response.json();
    error = body.error || body.detail?.error || (typeof body.detail === 'string' ? {message: body.detail} : null);
  } catch {
    // not JSON
  }
  const message = error?.message || `HTTP ${response.status}`;
  if (response.status === 401 || response.status === 403 || error?.code === 'invalid_api_key') {
    return new Refused('auth', message);
  }
  if (error?.code === 'server_full' || (response.status === 503 && !error?.code)) return new Refused('full', message);
  if (response.status === 503) return new Refused('unavailable', message);
  if (response.status === 404 || response.status === 405) {
    return new Refused('protocol', 'This server has no WebRTC endpoint (POST /v1/realtime/calls): choose WebSocket ' +
      'in Settings.');
  }
  return new Refused('protocol', message);
}
