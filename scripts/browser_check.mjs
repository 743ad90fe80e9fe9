// The live page in headless Chromium, driven over the DevTools protocol (Node's built-in
// WebSocket client: node --experimental-websocket): an active alarm is shown with its
// severity, an Acknowledge click changes its state, and the state survives a reload; the
// demo's job is listed with its progress.
// Usage: node --experimental-websocket scripts/browser_check.mjs CHROMIUM PAGE_URL
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [chromium, url] = process.argv.slice(2);
const browser = spawn(chromium, ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--remote-debugging-port=0',
  `--user-data-dir=${mkdtempSync(join(tmpdir(), 'fw-browser-'))}`, 'about:blank']);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const fail = (message) => { console.error(`browser check: ${message}`); browser.kill(); process.exit(1); };
setTimeout(() => fail('timed out'), 90_000).unref();

const endpoint = await new Promise((resolve) => {
  let text = '';
  browser.stderr.on('data', (chunk) => {
    text += chunk;
    const found = text.match(/DevTools listening on (ws:\/\/\S+)/);
    if (found) resolve(found[1]);
  });
});
const socket = new WebSocket(endpoint);
await new Promise((resolve) => { socket.onopen = resolve; });
let nextId = 0;
const pending = new Map();
socket.onmessage = (event) => {
  const message = JSON.parse(event.data);
  if (pending.has(message.id)) { pending.get(message.id)(message); pending.delete(message.id); }
};
const send = (method, params = {}, sessionId) => new Promise((resolve) => {
  const id = ++nextId;
  pending.set(id, resolve);
  socket.send(JSON.stringify({ id, method, params, sessionId }));
});
const { result: { targetId } } = await send('Target.createTarget', { url });
const { result: { sessionId } } = await send('Target.attachToTarget', { targetId, flatten: true });
const evaluate = async (expression) => (await send('Runtime.evaluate',
  { expression, awaitPromise: true, returnByValue: true }, sessionId)).result?.result?.value;
const waitFor = async (what, expression, ms) => {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await sleep(250)) {
    const value = await evaluate(expression);
    if (value) return value;
  }
  return fail(`no ${what} within ${ms} ms`);
};

const row = (id) => `document.querySelector('#alarms tr[data-id="${id}"]')`;
const alarm = await waitFor('active alarm', `(() => {
  const tr = document.querySelector('#alarms tr.alarm');
  return tr && { id: tr.dataset.id, severity: tr.querySelector('.severity').textContent,
                 state: tr.querySelector('.ack-state').textContent };
})()`, 30_000);
if (!['warning', 'minor', 'major', 'critical'].includes(alarm.severity)) fail(`severity ${alarm.severity}`);
await evaluate(`${row(alarm.id)}.querySelector('.do-ack').click()`);
await waitFor('acknowledged state', `${row(alarm.id)}?.querySelector('.ack-state').textContent === 'acknowledged'`, 10_000);
await send('Page.reload', {}, sessionId);
await sleep(1000);
// After the reload the page shows what the service keeps: still acknowledged (or, if the
// episode ended meanwhile, gone from the active list and acknowledged in the API).
const kept = await waitFor('state after reload', `(async () => {
  const tr = ${row(alarm.id)};
  if (tr) return tr.querySelector('.ack-state').textContent;
  const token = sessionStorage.getItem('fleetwatch-token');
  const answer = await fetch('/alarms/${encodeURIComponent(alarm.id)}', { headers: { Authorization: 'Bearer ' + token } });
  const body = await answer.json();
  return body.active === false && body.acknowledged ? 'acknowledged (cleared since)' : null;
})()`, 10_000);
if (!kept.startsWith('acknowledged')) fail(`after reload: ${kept}`);
// The demo's job (a software update of a few acme devices), with its devices updated.
const job = await waitFor('job with updated devices', `(() => {
  const tr = document.querySelector('#jobs tr.job');
  return tr && Number(tr.dataset.succeeded) > 0 && { id: tr.dataset.id,
    status: tr.querySelector('.job-status').textContent, progress: tr.querySelector('.progress').textContent,
    waves: tr.querySelector('.waves').textContent, targets: Number(tr.dataset.targets) };
})()`, 30_000);
if (!['running', 'completed'].includes(job.status)) fail(`job ${job.id} is ${job.status}`);
if (!job.progress.includes(`of ${job.targets}`)) fail(`job progress reads ${job.progress}`);
console.log(`browser: alarm ${alarm.id} shown as ${alarm.severity} ${alarm.state}; acknowledged by a click; after a reload: ${kept}`);
console.log(`browser: job ${job.id} ${job.status}, ${job.progress}, waves ${job.waves}`);
browser.kill();
process.exit(0);
