// Drives the npm piston-client for tests/test_piston.py: node piston.mjs SERVER runtimes|execute [ARGS_JSON].
// Prints what the client returned as JSON.
import piston from "piston-client";

const [server, action, args = "[]"] = process.argv.slice(2);
const client = piston({ server });
const result = action === "runtimes" ? await client.runtimes() : await client.execute(...JSON.parse(args));
process.stdout.write(JSON.stringify(result));
