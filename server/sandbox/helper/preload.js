// A pre-started node in a warm sandbox (sandbox/pool.py), started as
//   node --max-old-space-size=HEAP --require /.conveyor-preload.js main.js ARGV_FD BOOTED_FD
// (languages.toml `preload`; the driver appends the two descriptors). node loads this file while it prepares the
// main module, before it runs it: this closes BOOTED_FD (the driver then reports the sandbox ready), waits for the
// job's argv on ARGV_FD (what follows `node` in the job's run command), puts process.argv and process.execArgv as
// `node --max-old-space-size=HEAP main.js ARGS...` has them, removes itself from the module caches and returns.
// node itself then runs main.js, by the same code and from the same stack as a cold start (run_main_module ->
// Module.runMain): require.main, module.paths, relative requires, ES modules, uncaught exceptions and rejections
// (printed with the same stack), process.exit and process.exitCode, stdin and the flush of stdout at exit are node's
// own. Before it returns it uses only modules node has loaded at start-up (fs, path), so process.moduleLoadList is a
// cold start's, and no buffer of Buffer's shared pool.
// The job runs here only when its command is the one node was started with: the same heap flag (the server's default
// memory limit; a job with a memory limit of its own has another) and main.js as the entry point (server/sandbox/
// command.py job_message); else the driver discards this node and starts the program itself.
// What stays visible: /proc/self/cmdline (node's own argv, with --require, this file and the descriptors), this file
// at /.conveyor-preload.js (read-only, in cold javascript sandboxes too), the process's start time,
// performance.timeOrigin and performance.nodeTiming (performance.now() and process.uptime() count the wait for the
// job), this code's garbage in process.memoryUsage() until node collects it (about 1 KiB of arrayBuffers, 30 KiB
// of heap), and that node's start-up is not in the job's CPU time.
'use strict';

(() => {
  const fs = require('fs');
  const path = require('path');
  const Module = module.constructor;
  const [argvFd, bootedFd] = process.argv.slice(2).map(Number);
  fs.closeSync(bootedFd); // booted
  // Buffers of their own (allocUnsafeSlow): Buffer's shared pool stays as the program would find it (its first small
  // buffer at the same offset, and none of this in the pool's memory). Small, as they count in
  // process.memoryUsage().arrayBuffers until node collects them.
  let data = Buffer.allocUnsafeSlow(1024);
  let size = 0;
  for (let n; (n = fs.readSync(argvFd, data, size, data.length - size, null)) > 0; ) {
    size += n;
    if (size === data.length) {
      const bigger = Buffer.allocUnsafeSlow(data.length * 2);
      data.copy(bigger);
      data = bigger;
    }
  }
  fs.closeSync(argvFd);
  data = data.subarray(0, size);
  if (data.length === 0) {
    process.exit(0); // discarded before it got a job
  }
  const argv = data.toString('utf8').split('\0').slice(0, -1);
  // Node's own options as the job's command has them: this file's --require taken out.
  const at = process.execArgv.lastIndexOf('--require');
  if (at < 0 || process.execArgv[at + 1] !== __filename) {
    throw new Error('conveyor preload: started without --require ' + __filename);
  }
  process.execArgv.splice(at, 2);
  const options = process.execArgv.length;
  const same = process.execArgv.every((option, i) => argv[i] === option);
  if (!same || argv.length <= options || path.resolve(argv[options]) !== process.argv[1]) {
    throw new Error('conveyor preload: a job for another command: ' + JSON.stringify(argv));
  }
  process.argv.splice(2, Infinity, ...argv.slice(options + 1));
  const modules = Object.getOwnPropertyDescriptor(process, '_preload_modules');
  if (modules !== undefined) {
    Object.defineProperty(process, '_preload_modules', { ...modules, value: [] }); // as with no --require
  }
  delete Module._cache[__filename];
  for (const [key, value] of Object.entries(Module._pathCache)) {
    if (value === __filename) delete Module._pathCache[key];
  }
})();
