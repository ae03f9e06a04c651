// Sends records to fwdgate with Node's fluent-logger, optionally with the forward
// protocol handshake (shared key, user auth). Usage:
//   node send.js HOST PORT TAG COUNT [SHARED_KEY [USERNAME PASSWORD]]
// Each record is {log: "node line <i>", TENANT_ID: "tnode"}; exits 0 once every
// record was written with an ack (requireAckResponse), 1 on any error.
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

async function main() {
  for (let i = 0; i < Number(count); i++) {
    await new Promise((resolve, reject) => {
      sender.emit({ log: 'node line ' + i, TENANT_ID: 'tnode' }, (err) => (err ? reject(err) : resolve()));
    });
  }
  sender.end(null, null, () => process.exit(failed ? 1 : 0));
}

main().catch((err) => {
  console.error('send failed:', err && err.message ? err.message : err);
  process.exit(1);
});
