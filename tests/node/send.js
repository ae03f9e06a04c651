// Sends records to fwdgate with Node's fluent-logger, optionally with the forward
// protocol handshake (shared key, user auth). Usage:
//   [FLUENT_EVENT_MODE=PackedForward|CompressedPackedForward] \
//   node send.js HOST PORT TAG COUNT [SHARED_KEY [USERNAME PASSWORD]]
// Each record is {log: "node line <i>", TENANT_ID: "tnode"}; exits 0 once every
// record was written with an ack (requireAckResponse), 1 on any error. In Message mode
// (the default) each record waits for its ack before the next; in the packed modes all
// are emitted at once, so the client packs them into one request (it flushes every
// 100 ms) and acks them together.
'use strict';
const logger = require('fluent-logger');

const [host, port, tag, count, sharedKey, username, password] = process.argv.slice(2);
const options = {
  host,
  port: Number(port),
  timeout: 5.0,
  reconnectInterval: 200,
  requireAckResponse: true,
  ackResponseTimeout: 5000,
  eventMode: process.env.FLUENT_EVENT_MODE || 'Message',
};
if (sharedKey) {
  options.security = { clientHostname: 'node-client', sharedKey, username: username || '', password: password || '' };
}
const sender = logger.createFluentSender(tag, options);
let failed = false;
sender.on('error', (err) => {
  console.error('fluent-logger error:', err && err.message ? err.message : err);
  failed = true;
  process.exit(1);
});

function emit(i) {
  return new Promise((resolve, reject) => {
    sender.emit({ log: 'node line ' + i, TENANT_ID: 'tnode' }, (err) => (err ? reject(err) : resolve()));
  });
}

async function main() {
  if (options.eventMode === 'Message') {
    for (let i = 0; i < Number(count); i++) {
      await emit(i);
    }
  } else {
    const sent = [];
    for (let i = 0; i < Number(count); i++) {
      sent.push(emit(i));
    }
    await Promise.all(sent);
  }
  sender.end(null, null, () => process.exit(failed ? 1 : 0));
}

main().catch((err) => {
  console.error('send failed:', err && err.message ? err.message : err);
  process.exit(1);
});
