// retrec console: plain JavaScript, no dependencies. Every value from the server is put in the page as text
// (textContent), never as HTML. The API key lives in this tab's sessionStorage only.
"use strict";

const API = new URL("../", window.location.href); // the app's root, under any route prefix
const KEY = "retrec-api-key";
const $ = (id) => document.getElementById(id);
let models = null; // GET /v1/models

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function call(path, body) {
  const headers = { "X-API-Key": sessionStorage.getItem(KEY) || "" };
  const init = { method: body === undefined ? "GET" : "POST", headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const started = performance.now();
  const response = await fetch(new URL(path, API), init);
  const elapsed = performance.now() - started;
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) setKeyStatus(false, headers["X-API-Key"] ? "key refused" : "enter the API key");
  if (!response.ok) {
    const detail = data && data.error ? `${data.error.code}: ${data.error.message}` : response.statusText;
    throw new Error(`${response.status} ${detail}`);
  }
  return { data, elapsed };
}

function setKeyStatus(ok, text) {
  const status = $("key-status");
  status.textContent = text;
  status.className = ok ? "ok" : "bad";
}

function fillSelect(select, names, preferred) {
  select.replaceChildren(...names.map((n) => { const o = el("option", n); o.value = n; return o; }));
  if (preferred && names.includes(preferred)) select.value = preferred;
}

async function loadModels() {
  showError("");
  try {
    models = (await call("v1/models")).data;
  } catch (err) {
    models = null;
    showError(`could not read /v1/models: ${err.message}`);
    return;
  }
  setKeyStatus(true, "key accepted");
  const retrievers = Object.keys(models.retrievers || {});
  const names = models.hybrid ? [...retrievers, "hybrid"] : retrievers;
  fillSelect($("retriever"), names, models.hybrid ? "hybrid" : retrievers[0]);
  fillSelect($("a-retriever"), names, retrievers[0]);
  fillSelect($("b-retriever"), names, models.hybrid ? "hybrid" : retrievers[1]);
  fillSelect($("model"), Object.keys(models.recommenders || {}));
  fillSelect($("quality-retriever"), retrievers, retrievers.find((n) => models.retrievers[n].encoder) || retrievers[0]);
  $("rerank").disabled = !models.rerank;
  $("weights").replaceChildren(...retrievers.map((name) => {
    const label = el("label", `${name} `);
    const input = el("input");
    Object.assign(input, { type: "number", min: "0", max: "1000", step: "0.1", value: "1" });
    input.dataset.retriever = name;
    label.append(input);
    return label;
  }));
}

function weights() {
  const out = {};
  for (const input of $("weights").querySelectorAll("input")) out[input.dataset.retriever] = Number(input.value);
  return out;
}

function encoderOf(retriever) {
  const info = models && models.retrievers[retriever];
  if (!info || !info.encoder) return null;
  const enc = models.encoders[info.encoder];
  return enc ? `${enc.name}@${enc.version}` : info.encoder;
}

function answeredBy(body) {
  return Object.entries(body.index_versions).map(([name, version]) => {
    const enc = encoderOf(name);
    return `${name} @ ${version}${enc ? ` (encoder ${enc})` : ""}`;
  }).join("; ") + (body.partial ? ` — PARTIAL: ${body.failed_shards.join(", ")} failed` : "")
    + (body.reranked_by ? ` — re-ranked by ${body.reranked_by}` : "");
}

function latencyText(body, elapsed) {
  const t = body.timings || {};
  const parts = [`server ${body.took_ms.toFixed(1)} ms`, `round trip ${elapsed.toFixed(1)} ms`];
  for (const [key, value] of Object.entries(t)) if (key !== "total_ms") parts.push(`${key.replace("_ms", "")} ${value.toFixed(2)}`);
  return parts.join(" · ");
}

function snippet(hit) {
  const cell = el("td", null, "snippet");
  if (hit.title) cell.append(el("b", hit.title), document.createTextNode(" "));
  const text = hit.text || "";
  cell.append(document.createTextNode(text.length > 240 ? `${text.slice(0, 240)}…` : text));
  return cell;
}

function renderHits(table, body, others) {
  const hybrid = body.retriever === "hybrid";
  const parts = hybrid ? Object.keys(body.index_versions) : [];
  const head = el("tr");
  for (const name of ["rank", "doc id", "title / text", "score", ...parts.map((p) => `${p} score (rank)`)]) head.append(el("th", name));
  table.tHead.replaceChildren(head);
  table.tBodies[0].replaceChildren(...body.hits.map((hit) => {
    const row = el("tr");
    row.dataset.docId = hit.doc_id;
    if (others && !others.has(hit.doc_id)) row.className = "only";
    row.append(el("td", hit.rank, "num"), el("td", hit.doc_id), snippet(hit), el("td", hit.score.toFixed(4), "num"));
    for (const p of parts) {
      const c = hit.components && hit.components[p];
      row.append(el("td", c ? `${c.score.toFixed(4)} (${c.rank})` : "—", "num component"));
    }
    return row;
  }));
}

function searchBody(query, retriever, fusion, k) {
  const body = { query, retriever, k, return: ["text", "title"], timings: true };
  if (retriever === "hybrid") body.fusion = { method: fusion, weights: weights() };
  return body;
}

async function search(event) {
  event.preventDefault();
  showError("");
  const body = searchBody($("q").value, $("retriever").value, $("fusion").value, Number($("k").value));
  body.offset = Number($("offset").value);
  if ($("rerank").checked) body.rerank = true;
  try {
    const { data, elapsed } = await call("v1/search", body);
    renderHits($("results"), data);
    $("latency").textContent = latencyText(data, elapsed);
    $("answered").textContent = answeredBy(data);
  } catch (err) {
    showError(err.message);
  }
}

async function compare(event) {
  event.preventDefault();
  showError("");
  const q = $("cq").value, k = Number($("ck").value);
  const a = searchBody(q, $("a-retriever").value, $("a-fusion").value, k);
  const b = searchBody(q, $("b-retriever").value, $("b-fusion").value, k);
  try {
    const [ra, rb] = await Promise.all([call("v1/search", a), call("v1/search", b)]);
    const idsA = new Set(ra.data.hits.map((h) => h.doc_id)), idsB = new Set(rb.data.hits.map((h) => h.doc_id));
    renderHits($("a-results"), ra.data, idsB);
    renderHits($("b-results"), rb.data, idsA);
    $("a-title").textContent = `A: ${a.retriever}${a.fusion ? ` (${a.fusion.method})` : ""} — ${latencyText(ra.data, ra.elapsed)}`;
    $("b-title").textContent = `B: ${b.retriever}${b.fusion ? ` (${b.fusion.method})` : ""} — ${latencyText(rb.data, rb.elapsed)}`;
    const common = [...idsA].filter((d) => idsB.has(d)).length;
    $("overlap").textContent = `${common} of ${k} documents in both; highlighted rows are in one list only`;
  } catch (err) {
    showError(err.message);
  }
}

async function recommend(event) {
  event.preventDefault();
  showError("");
  const body = { k: Number($("rk").value), model: $("model").value, exclude_seen: $("exclude-seen").checked,
    explain: true };
  const user = $("user").value.trim();
  if (user) body.user = user;
  else body.history = $("history").value.split(",").map((s) => s.trim()).filter((s) => s);
  try {
    const { data, elapsed } = await call("v1/recommend", body);
    const parts = data.items.length && data.items[0].components ? Object.keys(data.items[0].components) : [];
    const head = el("tr");
    for (const name of ["rank", "item id", "score", ...parts.map((p) => `${p} part`)]) head.append(el("th", name));
    $("rec-results").tHead.replaceChildren(head);
    $("rec-results").tBodies[0].replaceChildren(...data.items.map((item) => {
      const row = el("tr");
      row.dataset.itemId = item.item_id;
      row.append(el("td", item.rank, "num"), el("td", item.item_id), el("td", item.score.toFixed(4), "num"));
      for (const p of parts) row.append(el("td", item.components[p].toFixed(4), "num component"));
      return row;
    }));
    $("rec-latency").textContent = `server ${data.took_ms.toFixed(1)} ms · round trip ${elapsed.toFixed(1)} ms`;
    $("rec-answered").textContent = `${data.model} @ ${data.model_version}` +
      (data.skipped_unknown ? ` — ${data.skipped_unknown} unknown items skipped (${data.unknown_examples.join(", ")})` : "");
  } catch (err) {
    showError(err.message);
  }
}

async function quality(event) {
  event.preventDefault();
  showError("");
  const body = { retriever: $("quality-retriever").value, sample: Number($("quality-sample").value),
    k: Number($("quality-k").value) };
  try {
    const { data } = await call("v1/quality", body);
    const rows = [
      ["retriever", `${data.retriever} @ ${data.index_version}`],
      ["queries", data.queries],
      [`recall@${data.k} against exact search`, data.recall.toFixed(4)],
      ["search p50 / p99 ms", `${data.search_ms.p50.toFixed(2)} / ${data.search_ms.p99.toFixed(2)}`],
      ["exact search p50 / p99 ms", `${data.exact_ms.p50.toFixed(2)} / ${data.exact_ms.p99.toFixed(2)}`],
    ];
    $("quality-result").tBodies[0].replaceChildren(...rows.map(([name, value]) => {
      const row = el("tr");
      row.dataset.name = name;
      row.append(el("th", name), el("td", value, "num"));
      return row;
    }));
  } catch (err) {
    showError(err.message);
  }
}

function showTab(name) {
  for (const button of $("tabs").querySelectorAll("button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== `tab-${name}`;
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of $("tabs").querySelectorAll("button")) button.addEventListener("click", () => showTab(button.dataset.tab));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    loadModels();
  });
  $("search-form").addEventListener("submit", search);
  $("compare-form").addEventListener("submit", compare);
  $("recommend-form").addEventListener("submit", recommend);
  $("quality-form").addEventListener("submit", quality);
  if (sessionStorage.getItem(KEY)) loadModels(); // else no call (it would only be refused) until a key is entered
  else setKeyStatus(false, "enter the API key");
});
