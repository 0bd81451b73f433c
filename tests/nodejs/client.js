// A Shardless client in Node.js built from the .proto files alone (stock @grpc/grpc-js and
// @grpc/proto-loader; protobufjs, which proto-loader is built on, decodes the rich error
// details). It follows the wire rules of docs/clients.md and nothing of the Python helper.
//
//   node client.js readme --proto-root DIR --addresses A,B,C
//       the README's examples, with assertions; prints "ok" and exits 0, or throws.
//   node client.js bank --proto-root DIR --addresses A,B,C --accounts N --seconds S
//                       --workers W --out FILE
//       bank transfers in interactive transactions with the retry loop of docs/clients.md;
//       prints "acked N" as transfers are acknowledged; writes every transfer and its outcome
//       (ok, skipped, failed, unknown) to FILE as JSON.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

// --- loading the contract --------------------------------------------------------------------

function load(protoRoot) {
  // The include root is proto/: imports read "shardless/v1/types.proto".
  const def = protoLoader.loadSync('shardless/v1/services.proto', {
    includeDirs: [protoRoot],
    keepCase: true,   // field names as in the .proto: int_value, transaction_id
    longs: String,    // int64/uint64 arrive as decimal strings: exact beyond 2^53
    enums: String,
    defaults: true,
    oneofs: true,     // a Value says which kind it holds: {kind: 'int_value', int_value: '1'}
  });
  const v1 = grpc.loadPackageDefinition(def).shardless.v1;
  // The rich error details: google.rpc.Status carrying google.rpc.ErrorInfo.
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(protoRoot, target);
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
  return {
    v1,
    Status: root.lookupType('google.rpc.Status'),
    ErrorInfo: root.lookupType('google.rpc.ErrorInfo'),
  };
}

// --- values ----------------------------------------------------------------------------------

// A JS value as a shardless.v1.Value. Integers go as int64 (as decimal strings, so a BigInt or
// a string of digits keeps all 64 bits); use {double_value: x} for a double that is integral.
function val(x) {
  if (x === null || x === undefined) return {};
  if (typeof x === 'bigint') return {int_value: x.toString()};
  if (typeof x === 'boolean') return {bool_value: x};
  if (typeof x === 'number') {
    if (!Number.isInteger(x)) return {double_value: x};
    if (!Number.isSafeInteger(x)) throw new RangeError(`${x} is past 2^53: pass a BigInt`);
    return {int_value: String(x)};
  }
  if (typeof x === 'string') return {string_value: x};
  if (Buffer.isBuffer(x)) return {bytes_value: x};
  if (typeof x === 'object') return x;  // already a Value
  throw new TypeError(`no Value for ${typeof x}`);
}

// A shardless.v1.Value as a JS value: int64 stays a string (exact), doubles are numbers.
function unval(v) {
  return v && v.kind ? v[v.kind] : null;
}

const row = (obj) => ({columns: Object.fromEntries(Object.entries(obj).map(([k, x]) => [k, val(x)]))});
const unrow = (r) => Object.fromEntries(Object.entries(r.columns).map(([k, v]) => [k, unval(v)]));
const key = (...parts) => ({parts: parts.map(val)});

// --- errors ----------------------------------------------------------------------------------

// The ErrorInfo reason of an error (DEADLOCK, NOT_APPLIED, CONDITION_FAILED, ...), or null.
function reasonOf(api, err) {
  const raw = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (!raw) return null;
  const status = api.Status.decode(raw);
  for (const any of status.details) {
    if (any.type_url === 'type.googleapis.com/google.rpc.ErrorInfo') {
      return api.ErrorInfo.decode(any.value).reason;
    }
  }
  return null;
}

// The protocol's retry rules (docs/clients.md, "Retries").
const C = grpc.status;
const retriable = (err) => [C.UNAVAILABLE, C.ABORTED, C.DEADLINE_EXCEEDED].includes(err.code);
// Did this failed call certainly change nothing? A node's refusal, or UNAVAILABLE/NOT_APPLIED.
// A transport failure or a deadline proves nothing: the write may have been applied.
function certainlyNotApplied(api, err) {
  if ([C.INVALID_ARGUMENT, C.NOT_FOUND, C.ALREADY_EXISTS, C.FAILED_PRECONDITION,
       C.RESOURCE_EXHAUSTED, C.ABORTED].includes(err.code)) return true;
  return err.code === C.UNAVAILABLE && reasonOf(api, err) === 'NOT_APPLIED';
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const backoff = (attempt) => sleep(Math.min(1000, 50 * 2 ** attempt) * (0.5 + Math.random()));

// --- connecting ------------------------------------------------------------------------------

// Methods that change no data may be re-sent on UNAVAILABLE by the channel itself.
const SAFE = [['RowService', 'Get'], ['RowService', 'BatchGet'], ['RowService', 'Scan'],
              ['TableService', 'ListTables'], ['TableService', 'DescribeTable'],
              ['ClusterService', 'Status'], ['TransactionService', 'Begin']];
const SERVICE_CONFIG = JSON.stringify({
  loadBalancingConfig: [{round_robin: {}}],
  methodConfig: [{
    name: SAFE.map(([s, m]) => ({service: `shardless.v1.${s}`, method: m})),
    retryPolicy: {maxAttempts: 5, initialBackoff: '0.05s', maxBackoff: '1s',
                  backoffMultiplier: 2, retryableStatusCodes: ['UNAVAILABLE']},
  }],
});

class Db {
  constructor(api, addresses) {
    this.api = api;
    const options = {'grpc.service_config': SERVICE_CONFIG,
                     'grpc.initial_reconnect_backoff_ms': 100,
                     'grpc.max_reconnect_backoff_ms': 1000};
    // One channel over every node, round-robin: any node serves any call.
    const target = 'ipv4:' + addresses.join(',');
    this.channel = new grpc.Channel(target, grpc.credentials.createInsecure(), options);
    this.stubs = this.stubsOn({channelOverride: this.channel}, target);
    this.perNode = new Map();  // interactive transactions are bound to their node
  }

  stubsOn(opts, target) {
    const {v1} = this.api;
    const mk = (S) => new S(target, grpc.credentials.createInsecure(), opts);
    return {tables: mk(v1.TableService), rows: mk(v1.RowService),
            txns: mk(v1.TransactionService), cluster: mk(v1.ClusterService)};
  }

  node(address) {
    if (!this.perNode.has(address)) {
      this.perNode.set(address, this.stubsOn({'grpc.initial_reconnect_backoff_ms': 100}, address));
    }
    return this.perNode.get(address);
  }

  close() {
    for (const s of [this.stubs, ...this.perNode.values()]) {
      for (const c of Object.values(s)) c.close();
    }
    this.channel.close();
  }
}

// Promisified unary call with a deadline.
function call(stub, method, request, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    stub[method](request, {deadline: Date.now() + timeoutMs}, (err, resp) =>
      err ? reject(err) : resolve(resp));
  });
}

function scan(stub, request, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const rows = [];
    const s = stub.Scan(request, {deadline: Date.now() + timeoutMs});
    s.on('data', (m) => rows.push(...m.rows.map(unrow)));
    s.on('error', reject);
    s.on('end', () => resolve(rows));
  });
}

// A one-shot write with an idempotency key, retried by the rules: the key makes the retry
// apply at most once even when the first attempt committed and only its reply was lost.
async function write(db, method, request, attempts = 8) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await call(db.stubs.rows, method, request);
    } catch (err) {
      if (!retriable(err) || attempt + 1 >= attempts) throw err;
    }
    await backoff(attempt);
  }
}

// The transaction retry loop: run fn(txn) in an interactive transaction and commit with one
// idempotency key for every attempt; re-run all of it on ABORTED, UNAVAILABLE or
// DEADLINE_EXCEEDED. fn returns the mutations to commit (or null to roll back).
// Resolves to {outcome: 'ok'|'skipped'|'unknown', attempts, commit}.
async function runTransaction(db, idempotencyKey, fn, attempts = 10) {
  let maybeApplied = false;
  for (let attempt = 0; attempt < attempts; attempt++) {
    let txn = null;
    let committing = false;
    try {
      const begun = await call(db.stubs.txns, 'Begin', {lifetime_ms: 20000});
      const on = db.node(begun.address);  // every call of the transaction goes there
      txn = {id: begun.transaction_id, on};
      const mutations = await fn(txn);
      if (mutations === null) {
        await call(on.txns, 'Rollback', {transaction_id: txn.id});
        return {outcome: 'skipped', attempts: attempt + 1};
      }
      committing = true;
      const commit = await call(on.txns, 'Commit', {transaction_id: txn.id,
        idempotency_key: idempotencyKey, mutations});
      return {outcome: 'ok', attempts: attempt + 1, commit};
    } catch (err) {
      if (committing && !certainlyNotApplied(db.api, err)) maybeApplied = true;
      if (txn && !committing) {
        call(txn.on.txns, 'Rollback', {transaction_id: txn.id}, 1000).catch(() => {});
      }
      if (!retriable(err)) {
        if (maybeApplied) break;  // settle below: an earlier attempt's commit may have applied
        throw err;
      }
    }
    await backoff(attempt);
  }
  if (!maybeApplied) return {outcome: 'failed', attempts};
  // Out of attempts after an ambiguous commit: settle the key so the answer is final.
  const o = await call(db.stubs.txns, 'GetOutcome', {idempotency_key: idempotencyKey, settle: true});
  return {outcome: o.state === 'APPLIED' ? 'ok' : 'unknown-settled-' + o.state, attempts};
}

// --- the README's examples -------------------------------------------------------------------

async function readme(api, addresses) {
  const db = new Db(api, addresses);
  const {tables, rows, txns} = db.stubs;
  try {
    await call(tables, 'CreateTable', {if_not_exists: true, schema: {name: 'users',
      columns: [{name: 'id', type: 'COLUMN_TYPE_INT64'}, {name: 'name', type: 'COLUMN_TYPE_STRING'}],
      primary_key: ['id']}});
    const up = await write(db, 'Upsert', {table: 'users', idempotency_key: 'readme-upsert-1',
      rows: [row({id: 1, name: 'ada'}), row({id: 2, name: 'grace'})]});
    assert.equal(up.rows_affected, '2');  // uint64: a string, with longs: String

    const got = await call(rows, 'Get', {table: 'users', key: key(1)});
    assert.equal(got.found, true);
    assert.deepEqual(unrow(got.row), {id: '1', name: 'ada'});
    assert.equal(got.row.version, up.commit_position);
    const scanned = await scan(rows, {table: 'users', start: {key: key(1)}, limit: 10});
    assert.deepEqual(scanned, [{id: '1', name: 'ada'}, {id: '2', name: 'grace'}]);

    // An interactive transaction: SELECT ... FOR UPDATE, then UPDATE, bound to its node.
    const done = await runTransaction(db, 'readme-title-1', async (txn) => {
      const ada = await call(txn.on.rows, 'Get', {table: 'users', key: key(1),
        transaction_id: txn.id, for_update: true});
      const name = unrow(ada.row).name;
      return [{table: 'users', kind: 'UPDATE',
               row: row({id: 1, name: name[0].toUpperCase() + name.slice(1)})}];
    });
    assert.equal(done.outcome, 'ok');
    assert.equal(unrow((await call(rows, 'Get', {table: 'users', key: key(1)})).row).name, 'Ada');

    // An insert with an idempotency key: the second send is a replay and applies nothing.
    const signup = {table: 'users', idempotency_key: 'signup-4', rows: [row({id: 4, name: 'barbara'})]};
    const first = await write(db, 'Insert', signup);
    const again = await write(db, 'Insert', signup);
    assert.equal(first.replayed, false);
    assert.equal(again.replayed, true);
    assert.equal(again.commit_position, first.commit_position);
    const outcome = await call(txns, 'GetOutcome', {idempotency_key: 'signup-4'});
    assert.equal(outcome.state, 'APPLIED');
    assert.equal(outcome.commit_position, first.commit_position);

    // The generated-stubs example: a row of Values, a Key of Values.
    await write(db, 'Upsert', {table: 'users', rows: [row({id: 3, name: 'edsger'})],
                               idempotency_key: 'readme-upsert-3'});
    assert.equal(unrow((await call(rows, 'Get', {table: 'users', key: key(3)})).row).name, 'edsger');

    // int64 past 2^53 survives as a string (or BigInt) both ways.
    const big = 2n ** 62n + 1n;
    await write(db, 'Upsert', {table: 'users', rows: [row({id: big, name: 'big'})],
                               idempotency_key: 'readme-upsert-big'});
    const bigRow = await call(rows, 'Get', {table: 'users', key: key(big)});
    assert.equal(unrow(bigRow.row).id, big.toString());

    // Errors: the code, and the reason from the rich status details.
    await assert.rejects(call(rows, 'Insert', {table: 'users', rows: [row({id: 1, name: 'x'})]}),
      (e) => e.code === C.ALREADY_EXISTS);
    await assert.rejects(call(rows, 'Write', {mutations: [{table: 'users', kind: 'UPSERT',
        row: row({id: 1, name: 'x'}), expected_version: '1'}]}),
      (e) => e.code === C.FAILED_PRECONDITION && reasonOf(api, e) === 'CONDITION_FAILED');
    // A bare {id: 1} instead of a Value fails in the client, before anything is sent.
    await assert.rejects(call(rows, 'Upsert', {table: 'users', rows: [{columns: {id: 1}}]}),
      (e) => e.code === C.INTERNAL && /serializ/i.test(e.details));
    console.log('ok');
  } finally {
    db.close();
  }
}

// --- bank transfers through faults -----------------------------------------------------------

async function bank(api, addresses, {accounts, seconds, workers, out}) {
  const db = new Db(api, addresses);
  const transfers = [];
  let acked = 0;
  const until = Date.now() + seconds * 1000;
  const worker = async (w) => {
    for (let i = 0; Date.now() < until; i++) {
      const id = `w${w}-${i}`;
      const a = Math.floor(Math.random() * accounts);
      const b = (a + 1 + Math.floor(Math.random() * (accounts - 1))) % accounts;
      const amount = 1 + Math.floor(Math.random() * 10);
      const t = {id, from: a, to: b, amount, start: Date.now() / 1000};
      transfers.push(t);
      try {
        const r = await runTransaction(db, `xfer-${id}`, async (txn) => {
          const [lo, hi] = a < b ? [a, b] : [b, a];  // lock in key order: no deadlock cycle
          const bal = {};
          for (const acct of [lo, hi]) {
            const g = await call(txn.on.rows, 'Get', {table: 'accounts', key: key(acct),
              transaction_id: txn.id, for_update: true});
            bal[acct] = Number(unval(g.row.columns.balance));
          }
          if (bal[a] < amount) return null;
          return [
            {table: 'accounts', kind: 'UPDATE', row: row({id: a, balance: bal[a] - amount})},
            {table: 'accounts', kind: 'UPDATE', row: row({id: b, balance: bal[b] + amount})},
            {table: 'transfers', kind: 'INSERT',
             row: row({id, src: a, dst: b, amount})},
          ];
        });
        t.outcome = r.outcome;
        t.attempts = r.attempts;
      } catch (err) {
        t.outcome = certainlyNotApplied(api, err) ? 'failed' : 'unknown';
        t.error = `${err.code} ${err.details}`;
      }
      t.end = Date.now() / 1000;
      if (t.outcome === 'ok') console.log(`acked ${++acked}`);
    }
  };
  try {
    await Promise.all(Array.from({length: workers}, (_, w) => worker(w)));
  } finally {
    fs.writeFileSync(out, JSON.stringify({transfers}));
    db.close();
  }
}

// --- main ------------------------------------------------------------------------------------

function args(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i += 2) o[argv[i].replace(/^--/, '')] = argv[i + 1];
  return o;
}

async function main() {
  const [cmd, ...rest] = process.argv.slice(2);
  const o = args(rest);
  const api = load(o['proto-root']);
  const addresses = o.addresses.split(',');
  if (cmd === 'readme') return readme(api, addresses);
  if (cmd === 'bank') {
    return bank(api, addresses, {accounts: Number(o.accounts), seconds: Number(o.seconds),
                                 workers: Number(o.workers), out: o.out});
  }
  throw new Error(`unknown command ${cmd}`);
}

main().then(() => process.exit(0), (err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
