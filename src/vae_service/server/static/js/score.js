// The anomaly score panel's parts that need no page state: an image of uniform noise to
// score (an obvious outlier, made here so that nothing extra ships), and the answer of
// POST /score drawn as a verdict line and a table of the statistics it is made of.

// mulberry32: a tiny seeded PRNG, so that the same page always makes the same noise.
function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// A PNG of uniform noise at the model's size: grey for one channel, colour otherwise.
export function noiseBlob([channels, height, width], seed = 1) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  const random = seeded(seed);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const grey = Math.floor(random() * 256);
    for (let c = 0; c < 3; c++) pixels.data[i + c] = channels === 1 ? grey : Math.floor(random() * 256);
    pixels.data[i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
  return new Promise((resolve) => canvas.toBlob((blob) => resolve(blob), "image/png"));
}

const number = (value) => (Math.abs(value) >= 100 ? value.toFixed(1) : value.toPrecision(4));

function verdict(answer, label) {
  const [image] = answer.scores;
  const said = `${label}: score ${number(image.score)}`;
  if (!answer.calibrated) return `${said}. ${answer.note}`;
  const rate = `${+(answer.fpr * 100).toFixed(3)}%`;
  const flag = image.anomalous ? "anomalous" : "in distribution";
  return (
    `${said}, p-value ${image.p_value.toPrecision(3)}: ${flag} at a ${rate} ` +
    `false-positive rate (flagged above ${number(answer.threshold)}).`
  );
}

// Show /score's answer for one image in ``panel`` (its score-verdict and score-parts).
export function showScore(panel, answer, label) {
  const line = panel.querySelector('[data-testid="score-verdict"]');
  line.textContent = verdict(answer, label);
  line.dataset.anomalous = String(answer.scores[0].anomalous);
  const rows = Object.entries(answer.scores[0].parts).map(([name, value]) => {
    const row = document.createElement("tr");
    row.dataset.part = name;
    const head = Object.assign(document.createElement("th"), { scope: "row", textContent: name });
    row.append(head, Object.assign(document.createElement("td"), { textContent: number(value) }));
    return row;
  });
  const caption = Object.assign(document.createElement("caption"), {
    textContent: `${answer.score_kind} score; IWAE with k = ${answer.k}`,
  });
  panel.querySelector('[data-testid="score-parts"]').replaceChildren(caption, ...rows);
}
