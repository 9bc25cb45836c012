// The playground: a model picked from GET /models (or GET /model on a service without a
// repository), and four panels that call the public API. Images are C×H×W PNGs as the
// service sends them, grey or colour: nothing here assumes one channel.

import { Api, ApiError, storeKey } from "./api.js";
import { drawPosterior, mostActive, posteriorStats } from "./chart.js";
import { noiseBlob, showScore } from "./score.js";

const api = new Api();
const MODEL_STORAGE = "vae-playground-model";
const byTestId = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);
const header = document.querySelector("header.top");
const panels = {
  sample: byTestId("sample-panel"),
  encode: byTestId("encode-panel"),
  interpolate: byTestId("interpolate-panel"),
  traverse: byTestId("traverse-panel"),
  score: byTestId("score-panel"),
};

const state = {
  model: null, // {name, base, shape: [C, H, W], latentDim, fitted}
  examples: [], // [{file, label, source}]
  samples: null, // the last /sample answer: {z, images}
  encoded: null, // the encode panel's image: {blob, label, mean, logvar}
  files: {}, // uploads of the interpolate and traverse panels, by source ("a", "b", "t")
};

// ---------------------------------------------------------------- errors and busy state

function showError(root, error) {
  const box = byTestId("error-message", root);
  box.textContent =
    error instanceof ApiError ? error.message : `Something went wrong in the page: ${error.message}`;
  box.hidden = false;
}

function clearError(root) {
  const box = byTestId("error-message", root);
  box.hidden = true;
  box.textContent = "";
}

// Run ``action`` for ``panel``: its error cleared, its submit button marked busy (not
// disabled: that would take the keyboard focus away), and any error shown in it. A
// second submit while one runs is ignored (``exclusive``). Resolves to whether it succeeded.
async function run(panel, action, { exclusive = true } = {}) {
  if (exclusive && panel.getAttribute("aria-busy") === "true") return false;
  clearError(panel);
  const buttons = [...panel.querySelectorAll('button[type="submit"]')];
  for (const button of buttons) button.setAttribute("aria-disabled", "true");
  panel.setAttribute("aria-busy", "true");
  try {
    await ensureModel();
    await action();
    return true;
  } catch (error) {
    showError(panel, error);
    return false;
  } finally {
    for (const button of buttons) button.removeAttribute("aria-disabled");
    panel.removeAttribute("aria-busy");
  }
}

// ---------------------------------------------------------------- images

function setImageSizes([, height, width]) {
  const side = Math.max(height, width);
  const scaled = (target) => `${width * Math.max(1, Math.floor(target / side))}px`;
  const style = document.documentElement.style;
  style.setProperty("--cell", scaled(84));
  style.setProperty("--big", scaled(168));
  style.setProperty("--small", scaled(56));
}

function pngImage(base64, alt) {
  const img = document.createElement("img");
  img.src = `data:image/png;base64,${base64}`;
  img.alt = alt;
  img.className = "px";
  return img;
}

function showBlob(img, blob) {
  if (img.dataset.objectUrl) URL.revokeObjectURL(img.dataset.objectUrl);
  img.dataset.objectUrl = URL.createObjectURL(blob);
  img.src = img.dataset.objectUrl;
  img.hidden = false;
}

const exampleUrl = (example) => new URL(`playground/${example.file}`, document.baseURI);
const blobCache = new Map();

async function exampleBlob(index) {
  if (!blobCache.has(index)) {
    const reply = await fetch(exampleUrl(state.examples[index]));
    if (!reply.ok) throw new ApiError(reply.status, `Cannot load the example image (HTTP ${reply.status})`);
    blobCache.set(index, await reply.blob());
  }
  return blobCache.get(index);
}

function imagesForm(...blobs) {
  const form = new FormData();
  blobs.forEach((blob, i) => form.append("images", blob, blob.name || `image-${i}.png`));
  return form;
}

// ---------------------------------------------------------------- model and status bar

const field = (name) => header.querySelector(`[data-field="${name}"]`);
const modelPath = (route) => `${state.model.base}${route}`;

function setStatus(values) {
  for (const [name, value] of Object.entries(values)) field(name).textContent = value;
}

api.onRequest(({ path, status, ms }) => {
  const route = path.replace(/^models\/[^/]+\//, "");
  setStatus({ latency: `${Math.round(ms)} ms (${route}${status ? `, ${status}` : ", no answer"})` });
});

const picker = byTestId("model-picker");

async function loadModels() {
  let listing = null;
  try {
    listing = await api.call("models");
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
  }
  if (listing) {
    const names = listing.models.map((m) => m.name);
    picker.replaceChildren(
      ...listing.models.map((m) => {
        const label = `${m.name}${m.default ? " (default)" : ""}${m.state === "ready" ? "" : `: ${m.state}`}`;
        return new Option(label, m.name);
      }),
    );
    let remembered = null;
    try {
      remembered = sessionStorage.getItem(MODEL_STORAGE);
    } catch {
      // no storage: the default model
    }
    picker.value = names.includes(remembered) ? remembered : listing.default;
    picker.disabled = names.length < 2;
    const entry = listing.models.find((m) => m.name === picker.value);
    await selectModel(picker.value, entry);
  } else {
    await selectModel(null, null);
  }
}

async function selectModel(name, entry) {
  state.model = null;
  const base = name === null ? "" : `models/${encodeURIComponent(name)}/`;
  setStatus({ ready: entry && entry.state !== "ready" ? entry.state : "connecting…" });
  const info = await api.call(name === null ? "model" : base.slice(0, -1));
  if (name === null) picker.replaceChildren(new Option(info.name, info.name));
  const shape = entry?.image_shape || [info.channels, info.image_size, info.image_size];
  state.model = {
    name: info.name,
    base,
    shape,
    latentDim: info.latent_dim,
    fitted: info.prior !== null && info.prior !== undefined,
  };
  setStatus({
    name: info.name,
    sha: info.sha256.slice(0, 12),
    device: info.device,
    shape: `${info.latent_dim} dims · images ${shape.join("×")}`,
  });
  field("sha").title = info.sha256;
  setImageSizes(shape);
  const fitted = document.querySelector('#sample-prior option[value="fitted"]');
  fitted.disabled = !state.model.fitted;
  document.getElementById("sample-prior").value = state.model.fitted ? "fitted" : "standard";
  document.getElementById("traverse-k").max = String(info.latent_dim);
  try {
    await api.call(name === null ? "readyz" : `${base}ready`);
    setStatus({ ready: "ready" });
  } catch (error) {
    setStatus({ ready: error instanceof ApiError && error.status === 503 ? "not ready" : "unknown" });
    throw error;
  }
}

async function ensureModel() {
  if (state.model === null) await connect();
}

async function connect() {
  clearError(header);
  try {
    await loadModels();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) setStatus({ ready: "needs an API key" });
    showError(header, error);
    throw error;
  }
}

function resetOutputs() {
  state.samples = null;
  state.encoded = null;
  byTestId("sample-grid").replaceChildren();
  byTestId("sample-seed").textContent = "";
  for (const id of ["encode-input", "reconstruction"]) byTestId(id).hidden = true;
  byTestId("posterior-chart").replaceChildren();
  byTestId("posterior-summary").textContent = "";
  byTestId("interpolation-strip").replaceChildren();
  byTestId("traversal-grid").replaceChildren();
  byTestId("score-input").hidden = true;
  byTestId("score-verdict").textContent = "";
  byTestId("score-parts").replaceChildren();
  for (const panel of Object.values(panels)) clearError(panel);
  refreshSources();
}

picker.addEventListener("change", async () => {
  try {
    sessionStorage.setItem(MODEL_STORAGE, picker.value);
  } catch {
    // no storage
  }
  resetOutputs();
  clearError(header);
  try {
    await selectModel(picker.value, null);
  } catch (error) {
    showError(header, error);
  }
});

const keyInput = byTestId("api-key");
keyInput.value = api.key;
document.getElementById("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  api.key = keyInput.value.trim();
  storeKey(api.key);
  for (const panel of Object.values(panels)) clearError(panel);
  await connect().catch(() => {});
});

// ---------------------------------------------------------------- sample

document.getElementById("sample-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  run(panels.sample, async () => {
    const answer = await api.call(modelPath("sample"), {
      params: {
        n: form.get("n"),
        seed: form.get("seed"),
        temperature: form.get("temperature"),
        prior: form.get("prior"),
        format: "json",
      },
    });
    state.samples = answer;
    byTestId("sample-grid").replaceChildren(
      ...answer.images.map((b64, i) => pngImage(b64, `sample ${i + 1}`)),
    );
    byTestId("sample-seed").textContent =
      `seed ${answer.seed} · prior ${answer.prior} · temperature ${answer.temperature} · ` +
      `${answer.images.length} images (the same seed gives the same grid)`;
    refreshSources();
  });
});

// ---------------------------------------------------------------- encode and reconstruct

let encodeGeneration = 0;

async function encode(blob) {
  const posterior = await api.call(modelPath("encode"), { form: imagesForm(blob) });
  return { mean: posterior.mean[0], logvar: posterior.logvar[0] };
}

function encodeImage(blob, label) {
  const generation = ++encodeGeneration;
  return run(panels.encode, async () => {
    const [posterior, recon] = await Promise.all([
      encode(blob),
      api.call(modelPath("reconstruct"), { form: imagesForm(blob) }),
    ]);
    if (generation !== encodeGeneration) return; // a later image was picked meanwhile
    showBlob(byTestId("encode-input"), blob);
    const reconstruction = byTestId("reconstruction");
    reconstruction.src = `data:image/png;base64,${recon.images[0]}`;
    reconstruction.hidden = false;
    const stats = drawPosterior(byTestId("posterior-chart"), posterior.mean, posterior.logvar);
    const active = stats.filter((s) => s.active).length;
    const kl = stats.reduce((sum, s) => sum + s.kl, 0);
    byTestId("posterior-summary").textContent =
      `${label}: ${active} of ${stats.length} latent dimensions active; ` +
      `KL(q(z|x) ‖ N(0, I)) = ${kl.toFixed(1)} nats.`;
    state.encoded = { blob, label, ...posterior };
    refreshSources();
  }, { exclusive: false }); // the image picked last wins
}

const upload = byTestId("upload-input");
upload.addEventListener("change", () => {
  if (upload.files.length) encodeImage(upload.files[0], upload.files[0].name);
});

const drop = document.getElementById("drop-zone");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) encodeImage(file, file.name);
});

async function loadExamples() {
  const reply = await fetch(new URL("playground/examples/examples.json", document.baseURI));
  state.examples = reply.ok ? await reply.json() : [];
  byTestId("example-picker").replaceChildren(
    ...state.examples.map((example, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "example";
      button.setAttribute("aria-label", `${example.label} (${example.source})`);
      button.title = example.source;
      const img = document.createElement("img");
      img.src = exampleUrl(example);
      img.alt = "";
      img.className = "px";
      const caption = document.createElement("span");
      caption.textContent = example.label;
      button.append(img, caption);
      button.addEventListener("click", async () => {
        let blob;
        try {
          blob = await exampleBlob(index);
        } catch (error) {
          showError(panels.encode, error);
          return;
        }
        encodeImage(blob, example.label);
      });
      return button;
    }),
  );
  refreshSources();
}

// ---------------------------------------------------------------- image sources

// The selects of the interpolate, traverse and score panels: an example, the encode
// panel's image, one of the last samples (interpolation only), noise made in the page
// (score only), or a file uploaded beside it.
const sources = [
  { key: "a", select: byTestId("interpolate-a"), file: byTestId("interpolate-a-file"), samples: true, initial: "example:0" },
  { key: "b", select: byTestId("interpolate-b"), file: byTestId("interpolate-b-file"), samples: true, initial: "last" },
  { key: "t", select: byTestId("traverse-source"), file: byTestId("traverse-file"), samples: false, initial: "example:0" },
  { key: "s", select: byTestId("score-source"), file: byTestId("score-file"), samples: false, noise: true, initial: "example:0" },
];

function refreshSources() {
  for (const source of sources) {
    const previous = source.select.value;
    const options = state.examples.map((example, i) => new Option(example.label, `example:${i}`));
    const encoded = new Option(
      state.encoded ? `encode panel: ${state.encoded.label}` : "encode panel (nothing yet)",
      "encoded",
    );
    encoded.disabled = !state.encoded;
    options.push(encoded);
    if (source.samples) {
      for (const i of [0, 1]) {
        const option = new Option(`last samples: image ${i + 1}`, `sample:${i}`);
        option.disabled = !state.samples || state.samples.z.length <= i;
        options.push(option);
      }
    }
    if (source.noise) options.push(new Option("uniform noise (made in this page)", "noise"));
    const uploaded = state.files[source.key];
    const file = new Option(uploaded ? `uploaded: ${uploaded.name}` : "uploaded file (none)", "file");
    file.disabled = !uploaded;
    options.push(file);
    source.select.replaceChildren(...options);
    const usable = options.filter((o) => !o.disabled).map((o) => o.value);
    const initial = source.initial === "last" ? `example:${state.examples.length - 1}` : source.initial;
    source.select.value = usable.includes(previous) ? previous : usable.includes(initial) ? initial : usable[0] || "";
  }
}

for (const source of sources) {
  source.file.addEventListener("change", () => {
    if (!source.file.files.length) return;
    state.files[source.key] = source.file.files[0];
    refreshSources();
    source.select.value = "file";
  });
}

// What a source is now: an image file (blob) or a latent (z), with a label.
async function resolveSource(select, key) {
  const [kind, index] = select.value.split(":");
  if (kind === "example") return { blob: await exampleBlob(Number(index)), label: state.examples[index].label };
  if (kind === "encoded" && state.encoded) return { blob: state.encoded.blob, label: state.encoded.label, posterior: state.encoded };
  if (kind === "sample" && state.samples) return { z: state.samples.z[Number(index)], label: `sample ${Number(index) + 1}` };
  if (kind === "noise") return { blob: await noiseBlob(state.model.shape), label: "uniform noise" };
  if (kind === "file" && state.files[key]) return { blob: state.files[key], label: state.files[key].name };
  throw new ApiError(0, "Pick an image first (or upload one)");
}

// ---------------------------------------------------------------- interpolate

const steps = byTestId("interpolate-steps");
steps.addEventListener("input", () => {
  document.getElementById("interpolate-steps-value").value = steps.value;
});

document.getElementById("interpolate-form").addEventListener("submit", (event) => {
  event.preventDefault();
  run(panels.interpolate, async () => {
    const [a, b] = await Promise.all([
      resolveSource(sources[0].select, "a"),
      resolveSource(sources[1].select, "b"),
    ]);
    const params = { steps: steps.value, format: "json" };
    let answer;
    if (a.blob && b.blob) {
      answer = await api.call(modelPath("interpolate"), { params, form: imagesForm(a.blob, b.blob) });
    } else {
      const [za, zb] = await Promise.all([a, b].map(async (end) => end.z || (await encode(end.blob)).mean));
      answer = await api.call(modelPath("interpolate"), { params, json: { z: [za, zb] } });
    }
    byTestId("interpolation-strip").replaceChildren(
      ...answer.images.map((b64, i) =>
        pngImage(b64, `step ${i + 1} of ${answer.images.length}, from ${a.label} to ${b.label}`),
      ),
    );
  });
});

// ---------------------------------------------------------------- traverse

document.getElementById("traverse-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  run(panels.traverse, async () => {
    const start = await resolveSource(sources[2].select, "t");
    const posterior = start.posterior || (await encode(start.blob));
    const stats = posteriorStats(posterior.mean, posterior.logvar);
    const k = Math.min(Number(form.querySelector("#traverse-k").value), stats.length);
    const range = Number(form.querySelector("#traverse-range").value);
    const count = Number(form.querySelector("#traverse-steps").value);
    const offsets = Array.from({ length: count }, (_, i) => -range + (2 * range * i) / (count - 1));
    const dims = mostActive(stats, k);
    const z = dims.flatMap((d) =>
      offsets.map((offset) => posterior.mean.map((m, i) => (i === d.dim ? m + offset : m))),
    );
    const answer = await api.call(modelPath("decode"), { params: { format: "json" }, json: { z } });
    const head = document.createElement("div");
    head.className = "trow thead";
    head.append(Object.assign(document.createElement("span"), { className: "tlabel", textContent: "offset" }));
    for (const offset of offsets) {
      head.append(Object.assign(document.createElement("span"), { className: "tick", textContent: `${offset > 0 ? "+" : ""}${offset.toFixed(1)}` }));
    }
    const rows = dims.map((d, r) => {
      const row = document.createElement("div");
      row.className = "trow";
      row.dataset.testid = "traversal-row";
      row.dataset.dim = String(d.dim);
      const label = document.createElement("span");
      label.className = "tlabel";
      label.textContent = `z${d.dim}`;
      label.title = `KL ${d.kl.toFixed(2)} nats; mean ${d.mean.toFixed(2)}`;
      row.append(label);
      answer.images.slice(r * count, (r + 1) * count).forEach((b64, i) => {
        row.append(pngImage(b64, `z${d.dim} ${offsets[i] >= 0 ? "+" : ""}${offsets[i].toFixed(1)}`));
      });
      return row;
    });
    byTestId("traversal-grid").replaceChildren(head, ...rows);
  });
});

// ---------------------------------------------------------------- score

document.getElementById("score-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  run(panels.score, async () => {
    const source = await resolveSource(sources[3].select, "s");
    const params = { k: form.get("k"), fpr: form.get("fpr") };
    const answer = await api.call(modelPath("score"), { params, form: imagesForm(source.blob) });
    showBlob(byTestId("score-input"), source.blob);
    showScore(panels.score, answer, source.label);
  });
});

// ---------------------------------------------------------------- start

loadExamples().catch((error) => showError(panels.encode, error));
connect().catch(() => {});
