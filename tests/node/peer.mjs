// A real Yjs peer for tests: npm `yjs` + `y-websocket`, driven over stdin/stdout.
//
//   node peer.mjs <ws base url> <room name> '<json query params>' ['<json headers>']
//
// Reads one JSON command per line on stdin, writes one JSON event per line on stdout:
//   {"op": "append", "cell": 0, "text": "..."}   type at the end of a cell's source
//   {"op": "insert_cell", "index": 1, "source": "..."}
//   {"op": "cursor", "cell": 0, "index": 3}       publish a cursor in a cell
//   {"op": "type", "text": "..."}                 type at the end of a text file (YUnicode)
//   {"op": "dump"}                                -> {"event": "dump", "cells": [...], "text": "...", "awareness": [...]}
//   {"op": "close"}                               -> exits
// Events: {"event": "synced"}, {"event": "status", "status": ...},
//         {"event": "closed", "code": ..., "reason": ...}, {"event": "update"} on each change.
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';
import WebSocket from 'ws';
import readline from 'node:readline';

const [base, room, paramsJson, headersJson] = process.argv.slice(2);
const params = JSON.parse(paramsJson || '{}');
const headers = JSON.parse(headersJson || '{}');
// Cookies or an Authorization header for the server (multi-user login).
class AuthWebSocket extends WebSocket {
  constructor(url, protocols) { super(url, protocols, { headers }); }
}
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n');

const doc = new Y.Doc();
const provider = new WebsocketProvider(base, room, doc, {
  WebSocketPolyfill: AuthWebSocket,
  disableBc: true,
  params,
  maxBackoffTime: 500,
});
provider.awareness.setLocalStateField('user', { name: 'Forged Name', username: 'forged', color: '#123456' });

provider.on('sync', (synced) => { if (synced) emit({ event: 'synced' }); });
provider.on('status', ({ status }) => emit({ event: 'status', status }));
provider.on('connection-close', (ev) => {
  if (ev) emit({ event: 'closed', code: ev.code, reason: ev.reason });
});
doc.on('update', () => emit({ event: 'update' }));
provider.awareness.on('change', () => emit({ event: 'awareness' }));

const cells = () => doc.getArray('cells');

function dump() {
  const states = [];
  provider.awareness.getStates().forEach((state, clientID) => {
    if (clientID !== doc.clientID) states.push({ clientID, ...state });
  });
  return {
    event: 'dump',
    cells: cells().toArray().map((c) => c.get('source').toString()),
    text: doc.getText('source').toString(),
    awareness: states,
  };
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.op === 'append') {
    const source = cells().get(cmd.cell).get('source');
    source.insert(source.length, cmd.text);
  } else if (cmd.op === 'insert_cell') {
    const cell = new Y.Map();
    cell.set('cell_type', 'code');
    cell.set('id', `node-${Date.now()}`);
    cell.set('source', new Y.Text(cmd.source));
    cell.set('metadata', new Y.Map());
    cell.set('outputs', new Y.Array());
    cell.set('execution_count', null);
    cells().insert(cmd.index, [cell]);
  } else if (cmd.op === 'type') {
    const source = doc.getText('source');
    source.insert(source.length, cmd.text);
  } else if (cmd.op === 'cursor') {
    const source = cells().get(cmd.cell).get('source');
    const pos = Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(source, cmd.index));
    provider.awareness.setLocalStateField('cursors', [{ anchor: pos, head: pos, primary: true, empty: true }]);
  } else if (cmd.op === 'dump') {
    emit(dump());
  } else if (cmd.op === 'close') {
    provider.destroy();
    process.exit(0);
  }
  emit({ event: 'done', op: cmd.op });
});
