// llama.cpp as a second oracle: runs a GGUF through node-llama-cpp (prebuilt CPU llama.cpp v0.5.0,
// which knows the deepseek4 architecture) and prints what it computes, for
// tests/oracle/llama_oracle_test.cpp. Adapted from shared/oracles/llama_cpp_logits.mjs.
//
// usage: node llama_cpp_logits.mjs --modules=DIR model.gguf "t0,t1,..." [nGreedy] [ubatch]
//   --modules=DIR  folder holding node_modules/node-llama-cpp (scripts/setup-llama-oracle
//                  installs it into <build>/oracle-node); default: normal resolution from here.
//   --no-logits    print only argmax per position (smaller output)
//
// Output, one JSON object per line:
//   {"pos": i, "tok": t, "argmax": a, "n": V, "logits": [V floats]}   for every prompt position
//   {"step": k, "tok": g_k, "argmax": g_(k+1), "n": V, "logits": [...]} for k < nGreedy - 1: the
//                                      decode of greedy token k (logits choosing token k + 1)
//   {"greedy": [g0, ..., g(nGreedy-1)]}   g0 = argmax after the prompt, each next one fed back
// Logits are float32 values printed as JS doubles: JSON.stringify gives the shortest string that
// round-trips, so the reader gets llama.cpp's exact bits back.
//
// Numerics: flash attention off and an F32 KV cache. Then llama.cpp's batch vs token-by-token
// differ by at most 2.4e-6 over 300 tokens and reruns are bit-identical; an F16 cache moves logits
// by about 1e-3 and flash attention flips indexer top-k choices (shared/oracles/README.md).
import path from "node:path";
import fs from "node:fs";
import {pathToFileURL} from "node:url";

const flags = process.argv.slice(2).filter((a) => a.startsWith("--"));
const args = process.argv.slice(2).filter((a) => !a.startsWith("--"));
const flag = (name) => flags.find((f) => f === `--${name}` || f.startsWith(`--${name}=`));
const [modelPath, idsArg = "1,2,3,4", nGreedyArg = "0", batchArg] = args;
if (!modelPath) {
    console.error("usage: node llama_cpp_logits.mjs [--modules=DIR] [--no-logits] model.gguf ids [nGreedy] [ubatch]");
    process.exit(2);
}
const ids = idsArg.split(",").map(Number);
const nGreedy = Number(nGreedyArg);
const withLogits = !flag("no-logits");

// The package lives in the build folder, not next to this script: import it by its file path
// (ESM imports ignore NODE_PATH).
async function importLlama() {
    const modules = flag("modules");
    if (!modules) return import("node-llama-cpp");
    const pkgDir = path.join(modules.slice("--modules=".length), "node_modules", "node-llama-cpp");
    const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8"));
    const entry = pkg.exports?.["."]?.import ?? pkg.main;
    return import(pathToFileURL(path.join(pkgDir, entry)).href);
}
const {getLlama, LlamaLogLevel} = await importLlama();

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.warn});
const model = await llama.loadModel({modelPath, gpuLayers: 0, useMmap: true});
const context = await model.createContext({
    contextSize: Math.max(64, ids.length + nGreedy + 8), sequences: 1,
    batchSize: batchArg ? Number(batchArg) : undefined, threads: 1, flashAttention: false,
    experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
});
const seq = context.getSequence();

// Raw logits at every position: generateNext.token with no sampler options is greedy (argmax).
const input = ids.map((t) => [t, {generateNext: {logits: withLogits, token: true}}]);
const res = await seq.controlledEvaluate(input);
for (let i = 0; i < ids.length; i++) {
    const out = {pos: i, tok: ids[i], argmax: res[i].next.token};
    if (withLogits) {
        const m = res[i].next.logits;
        const arr = [...m.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]);
        out.n = arr.length;
        out.logits = arr;
    }
    console.log(JSON.stringify(out));
}
// Greedy continuation: feed back each chosen token, one decode step at a time. Each step's
// logits (those that chose the next token) are printed too, so a reader can tell a real
// disagreement from a near-tie.
let last = res[ids.length - 1].next.token;
const greedy = [];
for (let k = 0; k < nGreedy; k++) {
    greedy.push(last);
    if (k + 1 === nGreedy) break;  // the last token needs no further step
    const r = await seq.controlledEvaluate([[last, {generateNext: {logits: withLogits, token: true}}]]);
    const out = {step: k, tok: last, argmax: r[0].next.token};
    if (withLogits) {
        const arr = [...r[0].next.logits.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]);
        out.n = arr.length;
        out.logits = arr;
    }
    console.log(JSON.stringify(out));
    last = r[0].next.token;
}
console.log(JSON.stringify({greedy}));
await context.dispose(); await model.dispose(); await llama.dispose();
