// Node 20 lacks Promise.withResolvers (added in Node 22); libp2p 3.x and its modules call it.
// Loaded before peer.mjs with `node --import ./polyfill.mjs peer.mjs`.
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      let resolve
      let reject
      const promise = new this((res, rej) => {
        resolve = res
        reject = rej
      })
      return { promise, resolve, reject }
    }
  })
}
