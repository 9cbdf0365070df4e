// openai-node's Realtime WebSocket client, unmodified, against lfm-audio over TLS: argv = base URL
// (https://host:port), API key, a speech WAV (24 kHz). It always builds a wss:// URL. Prints its findings as JSON.
const { createRequire } = require('node:module');
const fs = require('node:fs');
const path = require('node:path');
const need = createRequire(path.join(process.env.NODE_CLIENT, 'package.json'));
const OpenAI = need('openai').default;
const { OpenAIRealtimeWS } = need('openai/realtime/ws');

const [base, key, wav] = process.argv.slice(2);
const speech = fs.readFileSync(wav).subarray(44);  // 16-bit PCM after the 44-byte header (streaming.audio.write_wav)
const silence = (ms) => Buffer.alloc(48 * ms);

async function main() {
  const client = new OpenAI({ apiKey: key, baseURL: base + '/v1' });
  const rt = new OpenAIRealtimeWS({ model: 'lfm-audio' }, client);
  const found = { url: String(rt.url), errors: [] };
  const waiting = [];
  const heard = {};
  rt.on('event', (ev) => {
    if (ev.type === 'error') found.errors.push(ev.error.code);
    if (ev.type === 'response.output_audio.delta') heard[ev.item_id] = (heard[ev.item_id] || 0) + Buffer.from(ev.delta, 'base64').length / 48;
    for (const w of waiting.filter((w) => w.kind === ev.type)) { waiting.splice(waiting.indexOf(w), 1); w.resolve(ev); }
  });
  rt.on('error', (err) => { found.errors.push(String(err.message || err)); });
  const until = (kind, ms = 90000) => new Promise((resolve, reject) => {
    waiting.push({ kind, resolve });
    setTimeout(() => reject(new Error('timed out waiting for ' + kind)), ms).unref();
  });
  const sendAudio = (pcm) => {
    for (let i = 0; i < pcm.length; i += 1920) rt.send({ type: 'input_audio_buffer.append', audio: pcm.subarray(i, i + 1920).toString('base64') });
  };
  const created = await until('session.created');
  found.turn_detection = created.session.audio.input.turn_detection.type;
  // a spoken turn under server VAD
  let done = until('response.done');
  sendAudio(Buffer.concat([speech, silence(1200)]));
  found.spoken = (await done).response.status;
  // response.create with instructions and metadata
  let made = until('response.created'); done = until('response.done');
  rt.send({ type: 'response.create', response: { instructions: 'Greet the user.', metadata: { tag: 'node' }, max_output_tokens: 30 } });
  found.metadata = [(await made).response.metadata, (await done).response.metadata];
  // a text turn
  done = until('response.done');
  rt.send({ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Hi' }] } });
  rt.send({ type: 'response.create', response: { output_modalities: ['text'], max_output_tokens: 20 } });
  found.text = (await done).response.output_modalities;
  // barge-in and truncate
  made = until('response.created'); done = until('response.done');
  rt.send({ type: 'response.create' });
  await made;
  sendAudio(Buffer.concat([speech, silence(800)]));
  const cut = (await done).response;
  const next = until('response.done');
  const truncated = until('conversation.item.truncated');
  rt.send({ type: 'conversation.item.truncate', item_id: cut.output[0].id, content_index: 0, audio_end_ms: Math.floor((heard[cut.output[0].id] || 0) / 2) });
  found.barge_in = { status: cut.status, reason: cut.status_details && cut.status_details.reason, truncated: (await truncated).item_id === cut.output[0].id };
  await next;
  rt.close();
  console.log(JSON.stringify(found));
}
main().catch((e) => { console.error(e); process.exit(1); });
