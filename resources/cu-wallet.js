// Generate the AO compute unit's Arweave wallet (an RSA-4096 JWK) inside the
// guest at first start, never at build time: no secret is ever part of the
// measured image. Usage: node cu-wallet.js /var/lib/cu/wallet.json
// Does nothing when the file exists. Written 0600 via a temporary file.
'use strict'
const crypto = require('crypto')
const fs = require('fs')
const path = require('path')

const target = process.argv[2]
if (!target) {
  console.error('usage: cu-wallet.js WALLET_FILE')
  process.exit(2)
}
if (fs.existsSync(target)) process.exit(0)
fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o700 })
const { privateKey } = crypto.generateKeyPairSync('rsa', {
  modulusLength: 4096,
  publicExponent: 0x10001
})
const jwk = privateKey.export({ format: 'jwk' })
const tmp = `${target}.tmp-${process.pid}`
fs.writeFileSync(tmp, JSON.stringify(jwk), { mode: 0o600 })
fs.renameSync(tmp, target)
console.log(`generated CU wallet ${target}`)
