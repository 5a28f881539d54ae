// Portkey's gateway as N node processes on one port, for bench/run.py --workers N (N > 1): node's cluster module,
// as pm2's cluster mode runs a node server on several cores. The primary accepts the connections and hands them
// to the workers in turn; each worker is Portkey's own start-server.js.
//
//   node bench/portkey_cluster.mjs PROCESSES .bench/portkey/node_modules/@portkey-ai/gateway/build/start-server.js --port=8787 --headless
import cluster from "node:cluster";

const [processes, server, ...args] = process.argv.slice(2);
cluster.setupPrimary({ exec: server, args });
for (let i = 0; i < Number(processes); i++) {
  cluster.fork();
}
cluster.on("exit", (worker, code) => {
  console.error(`portkey worker ${worker.process.pid} exited with ${code}`);
  process.exit(1);
});
