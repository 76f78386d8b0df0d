// A js-libp2p peer for p2pshard's interop tests, driven by JSON lines.
//
// Run: node --import ./polyfill.mjs peer.mjs [--key ed25519|secp256k1]
//
// It listens on /ip4/127.0.0.1/tcp/0 only (TCP, Noise, yamux then mplex, identify, ping,
// gossipsub with signed messages, kad-dht in server mode that keeps private addresses).
// stdout carries JSON lines only: first {"event":"ready",...}, then one reply per command,
// {"id":N,"ok":true,...} or {"id":N,"ok":false,"error":"..."}, and {"event":"message",...} for each
// pubsub message received on a subscribed topic. Commands arrive on stdin as
// {"id":N,"cmd":"<name>",...}; bytes travel as hex strings. Logs go to stderr. The process
// exits when stdin closes or on {"cmd":"stop"}.

import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { mplex } from '@libp2p/mplex'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { lpStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { CID } from 'multiformats/cid'
import { fromString as fromHex, toString as toHex } from 'uint8arrays'

const MAX_FRAME = 4 * 1024 * 1024 // largest echo frame accepted, bytes
const DEFAULT_TIMEOUT_MS = 10_000

function log (...args) {
  process.stderr.write(`[js-peer] ${args.join(' ')}\n`)
}

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function argValue (name, fallback) {
  const i = process.argv.indexOf(name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

const keyType = argValue('--key', 'Ed25519')
const privateKey = await generateKeyPair(keyType.toLowerCase() === 'secp256k1' ? 'secp256k1' : 'Ed25519')

// Peers we refuse to connect to in either direction (tests use it to force a topology).
const denied = new Set()

const node = await createLibp2p({
  privateKey,
  connectionGater: {
    denyDialPeer: async (peerId) => denied.has(peerId.toString()),
    denyInboundEncryptedConnection: async (peerId) => denied.has(peerId.toString())
  },
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux(), mplex()],
  services: {
    identify: identify(),
    ping: ping(),
    pubsub: gossipsub({
      // StrictSign is the default signature policy; stated here because interop depends on it.
      globalSignaturePolicy: 'StrictSign',
      allowPublishToZeroTopicPeers: true,
      emitSelf: false,
      heartbeatInterval: 500
    }),
    dht: kadDHT({
      protocol: '/ipfs/kad/1.0.0',
      clientMode: false,
      // The default mapper drops private addresses, and every address here is 127.0.0.1.
      peerInfoMapper: passthroughMapper,
      allowQueryWithZeroPeers: true
    })
  }
})

// ---- received pubsub messages are pushed to stdout as events, as they arrive ----
// (No queue here: the controlling process owns the buffering and the waiting, with its own bounds.)
// 'gossipsub:message' (rather than 'message') also names the peer that forwarded the message.
node.services.pubsub.addEventListener('gossipsub:message', (evt) => {
  const { propagationSource, msg } = evt.detail
  emit({
    event: 'message',
    topic: msg.topic,
    data: toHex(msg.data, 'base16'),
    type: msg.type,
    from: msg.type === 'signed' ? msg.from.toString() : null,
    seqno: msg.type === 'signed' ? msg.sequenceNumber.toString() : null,
    receivedFrom: propagationSource.toString()
  })
})

// ---- echo protocol: one uvarint-length-prefixed frame in, the same frame out ----
async function serveEcho (stream) {
  try {
    const lp = lpStream(stream, { maxDataLength: MAX_FRAME })
    const frame = await lp.read({ signal: AbortSignal.timeout(DEFAULT_TIMEOUT_MS) })
    await lp.write(frame.subarray(), { signal: AbortSignal.timeout(DEFAULT_TIMEOUT_MS) })
    await stream.close({ signal: AbortSignal.timeout(DEFAULT_TIMEOUT_MS) })
  } catch (err) {
    log(`echo handler: ${err.message}`)
    stream.abort(err)
  }
}

function peerInfoJson (info) {
  return { peer: info.id.toString(), addrs: info.multiaddrs.map((a) => a.toString()) }
}

function connectionJson (conn) {
  return {
    peer: conn.remotePeer.toString(),
    remoteAddr: conn.remoteAddr.toString(),
    direction: conn.direction,
    muxer: conn.multiplexer,
    encryption: conn.encryption
  }
}

function target (cmd) {
  if (cmd.addr != null) return multiaddr(cmd.addr)
  if (cmd.peer != null) return peerIdFromString(cmd.peer)
  throw new Error('need "addr" or "peer"')
}

const handlers = {
  async info () {
    return {
      peerId: node.peerId.toString(),
      addrs: node.getMultiaddrs().map((a) => a.toString()),
      protocols: node.getProtocols(),
      connections: node.getConnections().map(connectionJson),
      dhtMode: await node.services.dht.getMode()
    }
  },
  async dial (cmd) {
    const conn = await node.dial(target(cmd), { signal: AbortSignal.timeout(cmd.timeoutMs ?? DEFAULT_TIMEOUT_MS) })
    return connectionJson(conn)
  },
  async 'deny-peer' (cmd) {
    denied.add(peerIdFromString(cmd.peer).toString())
    await node.hangUp(peerIdFromString(cmd.peer))
    return {}
  },
  async 'peer-protocols' (cmd) {
    const peer = await node.peerStore.get(peerIdFromString(cmd.peer))
    return { protocols: peer.protocols }
  },
  async subscribe (cmd) {
    node.services.pubsub.subscribe(cmd.topic)
    return {}
  },
  async 'topic-peers' (cmd) {
    return {
      subscribers: node.services.pubsub.getSubscribers(cmd.topic).map((p) => p.toString()),
      mesh: node.services.pubsub.getMeshPeers(cmd.topic)
    }
  },
  async publish (cmd) {
    const result = await node.services.pubsub.publish(cmd.topic, fromHex(cmd.data, 'base16'))
    return { recipients: result.recipients.map((p) => p.toString()) }
  },
  async 'serve-echo' (cmd) {
    await node.handle(cmd.protocol, serveEcho)
    return {}
  },
  async 'open-stream' (cmd) {
    const signal = AbortSignal.timeout(cmd.timeoutMs ?? DEFAULT_TIMEOUT_MS)
    const stream = await node.dialProtocol(target(cmd), cmd.protocol, { signal })
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_FRAME })
      await lp.write(fromHex(cmd.data, 'base16'), { signal })
      const reply = await lp.read({ signal })
      await stream.close({ signal })
      return { protocol: stream.protocol, data: toHex(reply.subarray(), 'base16') }
    } catch (err) {
      stream.abort(err)
      throw err
    }
  },
  async 'dht-find-peer' (cmd) {
    const signal = AbortSignal.timeout(cmd.timeoutMs ?? DEFAULT_TIMEOUT_MS)
    const info = await node.peerRouting.findPeer(peerIdFromString(cmd.peer), { signal })
    return peerInfoJson(info)
  },
  async 'dht-provide' (cmd) {
    const signal = AbortSignal.timeout(cmd.timeoutMs ?? DEFAULT_TIMEOUT_MS)
    await node.contentRouting.provide(CID.parse(cmd.cid), { signal })
    return {}
  },
  async 'dht-find-providers' (cmd) {
    const signal = AbortSignal.timeout(cmd.timeoutMs ?? DEFAULT_TIMEOUT_MS)
    const max = cmd.max ?? 20
    const providers = []
    for await (const info of node.contentRouting.findProviders(CID.parse(cmd.cid), { signal })) {
      providers.push(peerInfoJson(info))
      if (providers.length >= max) break
    }
    return { providers }
  },
  async 'dht-routing-table' () {
    const table = node.services.dht.routingTable
    return { size: table.size }
  },
  async stop () {
    setImmediate(shutdown)
    return {}
  }
}

let stopping = false
async function shutdown () {
  if (stopping) return
  stopping = true
  try {
    await node.stop()
  } catch (err) {
    log(`stop: ${err.message}`)
  }
  process.exit(0)
}

await node.start()
emit({
  event: 'ready',
  peerId: node.peerId.toString(),
  addrs: node.getMultiaddrs().map((a) => a.toString())
})

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', (line) => {
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (err) {
    emit({ id: null, ok: false, error: `bad JSON: ${err.message}` })
    return
  }
  const handler = handlers[cmd.cmd]
  if (handler == null) {
    emit({ id: cmd.id, ok: false, error: `unknown command ${cmd.cmd}` })
    return
  }
  // Commands run concurrently; replies carry the command's id.
  handler(cmd).then(
    (result) => emit({ id: cmd.id, ok: true, ...result }),
    (err) => emit({ id: cmd.id, ok: false, error: `${err.name}: ${err.message}` })
  )
})
rl.on('close', shutdown)
process.on('SIGTERM', shutdown)
