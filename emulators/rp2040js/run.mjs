// moat's rpi-pico board under rp2040js: an RP2040 with a persistent flash
// file and its USB CDC serial on a TCP socket (or stdio).
//
//   node run.mjs --bootrom bootrom.bin --flash flash.bin [--uf2 firmware.uf2]
//                [--write-only] [--port N]
//
// --uf2 writes the firmware's blocks into the flash file first (the rest of
// the flash, e.g. the filesystem, is kept); --write-only stops there.
// rp2040js's SSI is a stub that drops flash erase/program, so this installs
// a small SPI-NOR model (commands 02 03 05 06 0B 20 35 4B 52 9F C7 D8,
// framed by the QSPI chip-select override) that writes through to the flash
// file. USB CDC input is paced into the device's FIFO and the socket paused
// while it is full: nothing is dropped. Input waits for the node runtime's
// ready marker.
import { BasePeripheral, ConsoleLogger, LogLevel, Simulator, USBCDC } from 'rp2040js';
import fs from 'node:fs';
import net from 'node:net';

const FLASH_SIZE = 2 * 1024 * 1024;
const FLASH_BASE = 0x10000000;

function parseArgs(argv) {
  const a = { writeOnly: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) die(`${k} needs a value`);
      return argv[++i];
    };
    if (k === '--bootrom') a.bootrom = v();
    else if (k === '--flash') a.flash = v();
    else if (k === '--uf2') a.uf2 = v();
    else if (k === '--port') a.port = Number(v());
    else if (k === '--write-only') a.writeOnly = true;
    else die(`unknown argument ${k}`);
  }
  if (!a.flash) die('--flash FILE is required');
  return a;
}

function die(msg) {
  process.stderr.write(`rp2040js harness: ${msg}\n`);
  process.exit(2);
}

function readFlash(path) {
  const flash = new Uint8Array(FLASH_SIZE).fill(0xff);
  if (fs.existsSync(path)) {
    const data = fs.readFileSync(path);
    flash.set(data.subarray(0, FLASH_SIZE));
  }
  return flash;
}

// UF2: 512-byte blocks, payload of `size` bytes for `addr` (RP2040 family).
function writeUf2(flash, uf2) {
  let blocks = 0;
  for (let off = 0; off + 512 <= uf2.length; off += 512) {
    const b = new DataView(uf2.buffer, uf2.byteOffset + off, 512);
    if (b.getUint32(0, true) !== 0x0a324655 || b.getUint32(4, true) !== 0x9e5d5157) continue;
    if (b.getUint32(508, true) !== 0x0ab16f30) continue;
    const addr = b.getUint32(12, true);
    const size = b.getUint32(16, true);
    if (size > 476 || addr < FLASH_BASE || addr + size > FLASH_BASE + FLASH_SIZE) {
      die(`UF2 block ${blocks} targets 0x${addr.toString(16)} (+${size}), outside the flash`);
    }
    flash.set(uf2.subarray(off + 32, off + 32 + size), addr - FLASH_BASE);
    blocks++;
  }
  if (blocks === 0) die('the UF2 file holds no blocks');
  return blocks;
}

function saveFlash(path, flash) {
  const tmp = `${path}.tmp`;
  fs.writeFileSync(tmp, flash);
  fs.renameSync(tmp, path);
}

// The flash chip: one command per chip-select frame; rx byte i answers tx
// byte i (full duplex).
class SpiNor {
  constructor(mem, onChange) {
    this.mem = mem;
    this.onChange = onChange;
    this.selected = false;
    this.forced = false; // chip select held low by the QSPI override
    this.frame = [];
    this.wel = false;
  }
  select(on) {
    if (on === this.selected) return;
    this.selected = on;
    if (!on) this.finish();
    this.frame = [];
  }
  addr() {
    const f = this.frame;
    return ((f[1] << 16) | (f[2] << 8) | f[3]) % this.mem.length;
  }
  transfer(tx) {
    this.selected = true; // the SSI selects the chip for a transfer
    const f = this.frame;
    f.push(tx);
    const n = f.length - 1; // index of this byte in the frame
    const cmd = f[0];
    switch (cmd) {
      case 0x03: // read
        return n >= 4 ? this.mem[(this.addr() + n - 4) % this.mem.length] : 0;
      case 0x0b: // fast read: one dummy byte
        return n >= 5 ? this.mem[(this.addr() + n - 5) % this.mem.length] : 0;
      case 0x05: // status 1: never busy; WEL
        return this.wel ? 0x02 : 0;
      case 0x35: // status 2: QE set (quad mode already enabled)
        return 0x02;
      case 0x9f: // JEDEC id: Winbond W25Q16 (2 MiB)
        return [0, 0xef, 0x40, 0x15][n] ?? 0;
      case 0x4b: // unique id: 4 dummy bytes, then 8 bytes
        return n >= 5 ? 0x10 + n - 5 : 0;
      case 0x02: // page program: bits only go 1 -> 0, wrapping in the page
        if (n >= 4 && this.wel) {
          const a = this.addr();
          const page = a & ~0xff;
          const at = page + ((a + n - 4) & 0xff);
          this.mem[at] &= tx;
          this.dirty = true;
        }
        return 0;
      default:
        return 0;
    }
  }
  finish() {
    const f = this.frame;
    if (f.length === 0) return;
    const cmd = f[0];
    if (cmd === 0x06) this.wel = true;
    else if (cmd === 0x04) this.wel = false;
    else if (this.wel && f.length >= 4 && (cmd === 0x20 || cmd === 0x52 || cmd === 0xd8)) {
      const size = cmd === 0x20 ? 4096 : cmd === 0x52 ? 32768 : 65536;
      const start = this.addr() & ~(size - 1);
      this.mem.fill(0xff, start, start + size);
      this.wel = false;
      this.onChange();
    } else if (this.wel && (cmd === 0xc7 || cmd === 0x60)) {
      this.mem.fill(0xff);
      this.wel = false;
      this.onChange();
    } else if (cmd === 0x02 && this.dirty) {
      this.dirty = false;
      this.wel = false;
      this.onChange();
    }
  }
}

const SSI_SSIENR = 0x08;
const SSI_TXFLR = 0x20;
const SSI_RXFLR = 0x24;
const SSI_SR = 0x28;
const SSI_DR0 = 0x60;

// The SSI in SPI mode: DR0 writes go to the chip, answers queue for DR0 reads.
class FlashSSI extends BasePeripheral {
  constructor(rp2040, chip, stub) {
    super(rp2040, 'SSI');
    this.chip = chip;
    this.stub = stub;
    this.rx = [];
  }
  readUint32(offset) {
    switch (offset) {
      case SSI_TXFLR:
        return 0;
      case SSI_RXFLR:
        return this.rx.length;
      case SSI_SR:
        // TFE | TFNF, RFNE when answers wait
        return 0x06 | (this.rx.length ? 0x08 : 0);
      case SSI_DR0:
        return this.rx.length ? this.rx.shift() : 0;
      default:
        return this.stub.readUint32(offset);
    }
  }
  writeUint32(offset, value) {
    if (offset === SSI_DR0) {
      this.rx.push(this.chip.transfer(value & 0xff));
      if (this.rx.length > 64) this.rx.shift();
      return;
    }
    if (offset === SSI_SSIENR) {
      // Disabling the SSI flushes its FIFOs; without a forced chip select
      // it also ends the transfer (boot2 frames its commands this way).
      this.rx = [];
      if (!this.chip.forced) this.chip.select(false);
    }
    this.stub.writeUint32(offset, value);
  }
}

// IO_QSPI: only the chip select's output override (GPIO_QSPI_SS_CTRL,
// bits 9:8: 2 = low = selected, 3 = high) matters here.
class QspiIO extends BasePeripheral {
  constructor(rp2040, chip) {
    super(rp2040, 'IO_QSPI');
    this.chip = chip;
    this.regs = new Map();
  }
  readUint32(offset) {
    return this.regs.get(offset) ?? 0;
  }
  writeUint32(offset, value) {
    this.regs.set(offset, value);
    if (offset === 0x0c) {
      const over = (value >> 8) & 3;
      this.chip.forced = over === 2;
      if (over === 2) this.chip.select(true);
      else if (over === 3) this.chip.select(false);
    }
  }
}

const args = parseArgs(process.argv.slice(2));
const flash = readFlash(args.flash);
if (args.uf2) {
  const blocks = writeUf2(flash, fs.readFileSync(args.uf2));
  saveFlash(args.flash, flash);
  process.stderr.write(`rp2040js harness: ${blocks} UF2 blocks written to ${args.flash}\n`);
}
if (args.writeOnly) process.exit(0);
if (!args.bootrom) die('--bootrom FILE is required to run');

const sim = new Simulator();
const mcu = sim.rp2040;
mcu.logger = new ConsoleLogger(LogLevel.Error);
const rom = fs.readFileSync(args.bootrom);
mcu.loadBootrom(new Uint32Array(rom.buffer, rom.byteOffset, rom.length >> 2));
mcu.flash.set(flash.subarray(0, FLASH_SIZE), 0);

// Write the flash file back shortly after changes (and on exit).
let saveTimer = null;
const chipMem = mcu.flash.subarray(0, FLASH_SIZE);
const save = () => {
  saveTimer = null;
  saveFlash(args.flash, chipMem);
};
const chip = new SpiNor(chipMem, () => {
  if (!saveTimer) saveTimer = setTimeout(save, 200);
});
mcu.peripherals[0x18000] = new FlashSSI(mcu, chip, mcu.peripherals[0x18000]);
mcu.peripherals[0x40018] = new QspiIO(mcu, chip);

// USB CDC <-> socket (or stdio).
const cdc = new USBCDC(mcu.usbCtrl);
const pending = [];
let pendingBytes = 0;
let input = null; // the readable side to pause/resume
let output = null;
const HIGH_WATER = 4096;
// Host bytes wait until the node runtime serves its stdio link (it prints
// the ready marker): earlier, they would reach the REPL or boot code.
const MARKER = Buffer.from('moat: stdio ready');
let ready = false;
let seen = Buffer.alloc(0);
function watchReady(data) {
  if (ready) return;
  seen = Buffer.concat([seen, Buffer.from(data)]).subarray(-256);
  if (seen.includes(MARKER)) {
    ready = true;
    feed();
  }
}
function feed() {
  while (ready && pending.length && !cdc.txFIFO.full) {
    const chunk = pending[0];
    let i = chunk.off;
    while (i < chunk.buf.length && !cdc.txFIFO.full) cdc.sendSerialByte(chunk.buf[i++]);
    pendingBytes -= i - chunk.off;
    chunk.off = i;
    if (i === chunk.buf.length) pending.shift();
  }
  if (input && input.isPaused() && pendingBytes < HIGH_WATER) input.resume();
}
function take(buf) {
  pending.push({ buf, off: 0 });
  pendingBytes += buf.length;
  feed();
  if (pendingBytes >= HIGH_WATER) input.pause();
}
setInterval(feed, 1);
const debug = process.env.MOAT_RP2040_DEBUG;
cdc.onDeviceConnected = () => {
  if (debug) process.stderr.write('rp2040js harness: USB CDC connected\n');
};
if (debug) {
  setInterval(() => process.stderr.write(`pc=0x${mcu.core.PC.toString(16)}\n`), 2000);
}
cdc.onSerialData = (data) => {
  watchReady(data);
  if (output) output.write(Buffer.from(data));
};

if (args.port) {
  // One host at a time: a new connection replaces the old one (a host that
  // went away may not have been noticed yet).
  const server = net.createServer((sock) => {
    if (output) output.destroy();
    sock.setNoDelay(true);
    input = sock;
    output = sock;
    sock.on('data', (buf) => {
      if (input === sock) take(buf);
    });
    const gone = () => {
      if (output === sock) {
        output = null;
        input = null;
        // Half-sent input of the old host would garble the new one's.
        pending.length = 0;
        pendingBytes = 0;
      }
    };
    sock.on('close', gone);
    sock.on('error', gone);
  });
  server.on('error', (e) => die(`cannot listen on 127.0.0.1:${args.port}: ${e.message}`));
  server.listen(args.port, '127.0.0.1', () => {
    process.stderr.write(`rp2040js harness: USB CDC on 127.0.0.1:${args.port}\n`);
  });
} else {
  input = process.stdin;
  output = process.stdout;
  process.stdin.on('data', take);
  process.stdin.on('end', () => shutdown(0));
}

function shutdown(code) {
  sim.stop();
  if (saveTimer) clearTimeout(saveTimer);
  save();
  process.exit(code);
}
// Asked to stop: a Ctrl-C on the console (between messages) stops the node
// runtime cleanly, which clears its crash marker; once the REPL prompt shows
// (or after 3 s) the flash is saved. A runtime not yet serving is just
// stopped, as before.
let stopping = false;
const PROMPT = Buffer.from('>>> ');
function stop() {
  if (stopping) return;
  stopping = true;
  if (!ready) return shutdown(0);
  if (input) input.pause();
  pending.length = 0;
  pendingBytes = 0;
  ready = false; // host bytes no longer reach the node
  seen = Buffer.alloc(0);
  let tail = Buffer.alloc(0);
  const watch = cdc.onSerialData;
  cdc.onSerialData = (data) => {
    watch(data);
    tail = Buffer.concat([tail, Buffer.from(data)]).subarray(-64);
    if (tail.includes(PROMPT)) {
      if (debug) process.stderr.write('rp2040js harness: the node runtime stopped\n');
      setTimeout(() => shutdown(0), 100);
    }
  };
  cdc.sendSerialByte(0x03);
  setTimeout(() => {
    if (debug) process.stderr.write(`rp2040js harness: no REPL prompt after Ctrl-C: ${JSON.stringify(tail.toString('latin1'))}\n`);
    shutdown(0);
  }, 3000);
}
process.on('SIGINT', stop);
process.on('SIGTERM', stop);

// Start like the bootrom would after boot2: at the image's start.
mcu.core.PC = FLASH_BASE;
sim.execute();
