// The posterior q(z|x) of one image, per latent dimension: its mean ± one standard
// deviation over the prior's N(0, 1) band. A dimension whose posterior is the prior
// (KL below INACTIVE_KL nats) carries nothing about the image: it is drawn grey and
// dashed, as inactive.

export const INACTIVE_KL = 0.05;
const SVG_NS = "http://www.w3.org/2000/svg"; // a namespace name, never fetched

// Per dimension: mean, standard deviation and KL(q(z_i|x) || N(0, 1)) in nats.
export function posteriorStats(mean, logvar) {
  return mean.map((m, i) => {
    const lv = logvar[i];
    const sd = Math.exp(0.5 * lv);
    const kl = 0.5 * (m * m + Math.exp(lv) - 1 - lv);
    return { dim: i, mean: m, sd, kl, active: kl >= INACTIVE_KL };
  });
}

// Dimensions by decreasing KL: the ones the encoder uses most for this image.
export function mostActive(stats, k) {
  return [...stats].sort((a, b) => b.kl - a.kl).slice(0, k);
}

function svg(name, attributes = {}, text = undefined) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function dataTable(stats) {
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "The numbers";
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const title of ["dimension", "mean", "sd", "KL (nats)", ""]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = title;
    head.append(th);
  }
  const body = table.createTBody();
  for (const s of stats) {
    const row = body.insertRow();
    for (const value of [`z${s.dim}`, s.mean.toFixed(3), s.sd.toFixed(3), s.kl.toFixed(3), s.active ? "active" : "inactive"]) {
      row.insertCell().textContent = value;
    }
  }
  details.append(summary, table);
  return details;
}

// Draw the chart into ``container`` (replacing what was there); returns the stats.
export function drawPosterior(container, mean, logvar) {
  const stats = posteriorStats(mean, logvar);
  const dims = stats.length;
  const active = stats.filter((s) => s.active).length;
  const dx = 16;
  const left = 30;
  const top = 8;
  const height = 150;
  const bottom = 26;
  const width = left + dims * dx + 8;
  const extent = Math.max(...stats.map((s) => Math.abs(s.mean) + s.sd), 3);
  const lim = Math.min(8, Math.ceil(extent));
  const y = (v) => top + ((lim - Math.max(-lim, Math.min(lim, v))) / (2 * lim)) * height;
  const x = (i) => left + i * dx + dx / 2;

  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${top + height + bottom}`,
    width,
    role: "img",
    "aria-label": `Posterior mean ± one standard deviation for ${dims} latent dimensions; ${active} active, ${dims - active} inactive`,
    "data-dims": dims,
    "data-active": active,
  });
  chart.append(svg("rect", { class: "prior-band", x: left, y: y(1), width: dims * dx, height: y(-1) - y(1) }));
  const step = lim > 4 ? 2 : 1;
  for (let v = -lim; v <= lim; v += step) {
    chart.append(svg("line", { class: v === 0 ? "axis" : "gridline", x1: left, x2: left + dims * dx, y1: y(v), y2: y(v) }));
    chart.append(svg("text", { class: "tick", x: left - 4, y: y(v) + 3, "text-anchor": "end" }, String(v)));
  }
  const every = dims <= 48 ? 1 : Math.ceil(dims / 24);
  for (const s of stats) {
    const group = svg("g", { class: s.active ? "dim active" : "dim inactive", "data-dim": s.dim });
    group.append(
      svg(
        "title",
        {},
        `z${s.dim}: mean ${s.mean.toFixed(2)}, sd ${s.sd.toFixed(2)}, KL ${s.kl.toFixed(2)} nats` +
          (s.active ? "" : " (inactive: the posterior is the prior)"),
      ),
    );
    const cx = x(s.dim);
    group.append(svg("rect", { class: "hit", x: cx - dx / 2, y: top, width: dx, height }));
    group.append(svg("line", { class: "whisker", x1: cx, x2: cx, y1: y(s.mean + s.sd), y2: y(s.mean - s.sd) }));
    for (const end of [s.mean + s.sd, s.mean - s.sd]) {
      group.append(svg("line", { class: "cap", x1: cx - 3, x2: cx + 3, y1: y(end), y2: y(end) }));
    }
    group.append(svg("circle", { class: "mean", cx, cy: y(s.mean), r: 3 }));
    if (s.dim % every === 0) {
      group.append(svg("text", { class: "label", x: cx, y: top + height + 14, "text-anchor": "middle" }, String(s.dim)));
    }
    chart.append(group);
  }
  chart.append(svg("text", { class: "tick", x: left, y: top + height + bottom - 1 }, "latent dimension"));

  const legend = document.createElement("p");
  legend.className = "legend";
  legend.innerHTML =
    '<span class="swatch active"></span> active <span class="swatch inactive"></span> inactive ' +
    `(KL &lt; ${INACTIVE_KL} nats: mean ≈ 0, sd ≈ 1) <span class="swatch band"></span> prior N(0, 1) ± 1 sd`;
  container.replaceChildren(chart, legend, dataTable(stats));
  return stats;
}
