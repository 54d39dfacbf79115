// A small SVG line of recent rates, scaled to its own largest value; a flat
// line at the bottom means nothing moved. Drawn from attributes only.

import { svg } from "./dom.js";

const WIDTH = 80;
const HEIGHT = 18;

export function sparkline(label) {
  const node = svg("svg", {
    class: "sparkline", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, width: WIDTH, height: HEIGHT,
    role: "img", "aria-label": label, preserveAspectRatio: "none",
  });
  node.dataset.label = label;
  node.append(svg("polyline", { fill: "none", "stroke-width": "1.5", points: "" }));
  return node;
}

export function drawSparkline(node, values) {
  const line = node.firstChild;
  if (values.length < 2) {
    line.setAttribute("points", "");
    return;
  }
  const top = Math.max(...values) || 1;
  const step = WIDTH / (values.length - 1);
  const points = values.map((value, index) => {
    const x = (index * step).toFixed(1);
    const y = (HEIGHT - 1 - (value / top) * (HEIGHT - 2)).toFixed(1);
    return `${x},${y}`;
  });
  line.setAttribute("points", points.join(" "));
  node.setAttribute("aria-label",
    `${node.dataset.label}: last ${values.length} samples, peak ${top.toFixed(1)}/s`);
}
