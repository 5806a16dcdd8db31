// A chat, whole and streamed, from Node through Tinfoil's published `ehbp` package,
// used as its README shows: directly (`ehbp`) or as the `fetch` of the OpenAI Node SDK
// (`openai`). Prints one JSON line; exit 0 when both answers came back, 3 when the
// client refused or failed (its error's name and message in the line).
//
//   node ehbp-chat.mjs ehbp|openai GATEWAY_URL MODEL
import { createTransport } from "ehbp";
import OpenAI from "openai";

const [mode, url, model] = process.argv.slice(2);
const messages = [{ role: "user", content: "hello" }];

async function viaEhbp(transport) {
  const post = (body) => transport.post(`${url}/v1/chat/completions`, JSON.stringify(body),
                                        { headers: { "Content-Type": "application/json" } });
  const whole = await post({ model, messages, max_tokens: 4 });
  if (!whole.ok) throw new Error(`whole answer: HTTP ${whole.status}`);
  const content = (await whole.json()).choices[0].message.content;
  const streamed = await post({ model, messages, max_tokens: 4, stream: true });
  if (!streamed.ok) throw new Error(`streamed answer: HTTP ${streamed.status}`);
  const reader = streamed.body.getReader();
  const decoder = new TextDecoder();
  let events = "", pieces = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    pieces += 1;
    events += decoder.decode(value, { stream: true });
  }
  const deltas = events.split("\n\n").filter((e) => e.startsWith("data: {"))
    .map((e) => JSON.parse(e.slice(6))).filter((e) => e.choices.length)
    .map((e) => e.choices[0].delta.content ?? "");
  // the last event is [DONE]; comment events (padding, a receipt after it) do not count
  const last = events.split("\n\n").filter((e) => e && !e.startsWith(":")).at(-1);
  return { content, streamed: deltas.join(""), pieces, done: last === "data: [DONE]" };
}

async function viaOpenAI(transport) {
  const sdk = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0,
                           fetch: (input, init) => transport.request(input, init) });
  const whole = await sdk.chat.completions.create({ model, messages, max_tokens: 4 });
  const stream = await sdk.chat.completions.create({ model, messages, max_tokens: 4, stream: true });
  let streamed = "", pieces = 0;
  for await (const chunk of stream) {
    pieces += 1;
    if (chunk.choices.length) streamed += chunk.choices[0].delta.content ?? "";
  }
  return { content: whole.choices[0].message.content, streamed, pieces, done: true };
}

try {
  const transport = await createTransport(url);
  const result = await (mode === "openai" ? viaOpenAI : viaEhbp)(transport);
  console.log(JSON.stringify({ ok: true, ...result }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: error?.constructor?.name ?? "Error",
                               message: String(error?.message ?? error) }));
  process.exit(3);
}
