// Renders the charts of a benchmark report page (report_html.py) as SVG: no libraries, no network.
// Input: the JSON in <script id="report-data">: {modes: [{name, color}], charts: [chart]}; a chart has
// id, title, x/y axes ({label, scale: "linear"|"symlog"|"category", categories, linthresh, min}),
// lines (reference lines: {axis, value, label, dash}) and variants ({name: [element]}, the first shown;
// several make a selector). Elements: {type: "point"|"rect"|"step"|"segment", mode, text, ...coordinates}.
// Modes are toggled by the legend's checkboxes (or hidden from the start with #hide=mode1,mode2).
// After drawing, each chart's <figure> carries data-drawn (elements drawn) and the body data-rendered.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 660, MARGIN = {left: 64, right: 12, top: 10, bottom: 42};
const data = JSON.parse(document.getElementById("report-data").textContent);
const colors = Object.fromEntries(data.modes.map(m => [m.name, m.color]));
const hidden = new Set(decodeURIComponent((location.hash.match(/hide=([^&]*)/) || [])[1] || "").split(",").filter(Boolean));
const chosen = {};  // chart id -> variant shown
const tooltip = document.getElementById("tooltip");

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

function transform(axis) {  // value -> [0, 1] within the axis's domain, after its scale
  const f = axis.scale === "symlog" ? v => Math.sign(v) * Math.log10(1 + Math.abs(v) / axis.linthresh) : v => v;
  const [lo, hi] = [f(axis.domain[0]), f(axis.domain[1])];
  return v => (f(v) - lo) / ((hi - lo) || 1);
}

function niceTicks(lo, hi) {
  const span = hi - lo || 1, step0 = Math.pow(10, Math.floor(Math.log10(span / 5)));
  const step = [1, 2, 5, 10].map(m => m * step0).find(s => span / s <= 7);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

function ticks(axis) {
  if (axis.scale === "category") return axis.categories.map((c, i) => [i, c]);
  if (axis.scale !== "symlog") return niceTicks(...axis.domain).map(t => [t, format(t)]);
  const out = [[0, "0"]];
  for (let v = axis.linthresh; v <= Math.max(Math.abs(axis.domain[0]), Math.abs(axis.domain[1])) * 1.01; v *= 10) {
    if (v <= axis.domain[1]) out.push([v, format(v)]);
    if (-v >= axis.domain[0]) out.push([-v, format(-v)]);
  }
  return out;
}

function format(v) {
  return Math.abs(v) >= 1000 || Math.abs(v) < 0.01 && v !== 0 ? v.toExponential(0) : String(+v.toPrecision(3));
}

function coordinates(e, key) {
  if (e.type === "point") return key === "x" ? [e.x] : [e.y];
  if (e.type === "step") return key === "x" ? e.xs : e.ys;
  return key === "x" ? [e.x0, e.x1] : [e.y0, e.y1];
}

function domain(axis, elements, lines, key) {
  if (axis.scale === "category") return [-0.6, axis.categories.length - 0.4];
  const values = elements.flatMap(e => coordinates(e, key));
  values.push(...lines.filter(l => l.axis === key).map(l => l.value));
  if (axis.min !== undefined) values.push(axis.min);
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!isFinite(lo)) [lo, hi] = [0, 1];
  const pad = axis.scale === "symlog" ? 0 : (hi - lo) * 0.05 || 1;
  return [axis.min !== undefined ? axis.min : lo - pad, hi + pad];
}

function show(event, text) {
  tooltip.textContent = text;
  tooltip.style.display = "block";
  tooltip.style.left = (event.pageX + 12) + "px";
  tooltip.style.top = (event.pageY + 12) + "px";
}

function hover(node, text) {
  el("title", {}, node).textContent = text;
  node.addEventListener("mousemove", event => show(event, text));
  node.addEventListener("mouseleave", () => { tooltip.style.display = "none"; });
}

function draw(chart) {
  const figure = document.getElementById(chart.id);
  const svgHolder = figure.querySelector(".plot");
  svgHolder.textContent = "";
  const elements = chart.variants[chosen[chart.id]].filter(e => !hidden.has(e.mode));
  const height = chart.height || 300;
  const x = {...chart.x}, y = {...chart.y};
  x.domain = domain(x, elements, chart.lines, "x");
  y.domain = domain(y, elements, chart.lines, "y");
  const fx = transform(x), fy = transform(y);
  const w = WIDTH - MARGIN.left - MARGIN.right, h = height - MARGIN.top - MARGIN.bottom;
  const px = v => MARGIN.left + fx(v) * w, py = v => MARGIN.top + (1 - fy(v)) * h;
  const svg = el("svg", {width: WIDTH, height, viewBox: `0 0 ${WIDTH} ${height}`}, svgHolder);
  for (const [value, label] of ticks(x)) {
    el("line", {x1: px(value), x2: px(value), y1: MARGIN.top, y2: MARGIN.top + h, class: "grid"}, svg);
    el("text", {x: px(value), y: MARGIN.top + h + 14, class: "tick", "text-anchor": "middle"}, svg).textContent = label;
  }
  for (const [value, label] of ticks(y)) {
    el("line", {x1: MARGIN.left, x2: MARGIN.left + w, y1: py(value), y2: py(value), class: "grid"}, svg);
    el("text", {x: MARGIN.left - 5, y: py(value) + 4, class: "tick", "text-anchor": "end"}, svg).textContent = label;
  }
  el("rect", {x: MARGIN.left, y: MARGIN.top, width: w, height: h, class: "frame"}, svg);
  el("text", {x: MARGIN.left + w / 2, y: height - 6, "text-anchor": "middle", class: "label"}, svg).textContent = x.label;
  el("text", {x: 12, y: MARGIN.top + h / 2, transform: `rotate(-90 12 ${MARGIN.top + h / 2})`,
              "text-anchor": "middle", class: "label"}, svg).textContent = y.label;
  let drawn = 0;
  for (const e of elements) {
    const color = e.color || colors[e.mode] || "#444";
    let node;
    if (e.type === "point") {
      node = el("circle", {cx: px(e.x), cy: py(e.y), r: 4, fill: color, class: "point", "data-mode": e.mode}, svg);
    } else if (e.type === "rect") {
      const [x0, x1] = [px(e.x0), px(e.x1)].sort((a, b) => a - b), [y0, y1] = [py(e.y0), py(e.y1)].sort((a, b) => a - b);
      node = el("rect", {x: x0, y: y0, width: Math.max(1, x1 - x0), height: Math.max(1, y1 - y0), fill: color,
                         class: "bar", "data-mode": e.mode}, svg);
    } else if (e.type === "segment") {
      node = el("line", {x1: px(e.x0), x2: px(e.x1), y1: py(e.y0), y2: py(e.y1), stroke: e.color || "#000",
                         class: "segment", "data-mode": e.mode}, svg);
    } else {
      const path = e.xs.map((v, i) => `${i ? "H" : "M"}${px(v)}` + (i ? `V${py(e.ys[i])}` : `,${py(e.ys[i])}`));
      node = el("path", {d: path.join(""), stroke: color, class: "step", "data-mode": e.mode}, svg);
    }
    hover(node, e.text);
    drawn += 1;
  }
  for (const line of chart.lines) {
    const attrs = line.axis === "y"
      ? {x1: MARGIN.left, x2: MARGIN.left + w, y1: py(line.value), y2: py(line.value)}
      : {x1: px(line.value), x2: px(line.value), y1: MARGIN.top, y2: MARGIN.top + h};
    hover(el("line", {...attrs, class: "reference", "stroke-dasharray": line.dash}, svg), `${line.label}: ${format(line.value)}`);
  }
  figure.dataset.drawn = drawn;
}

function legend() {
  const holder = document.getElementById("modes");
  for (const mode of data.modes) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = !hidden.has(mode.name);
    box.dataset.mode = mode.name;
    box.addEventListener("change", () => {
      box.checked ? hidden.delete(mode.name) : hidden.add(mode.name);
      data.charts.forEach(draw);
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = mode.color;
    label.append(box, swatch, mode.name);
    holder.appendChild(label);
  }
}

function setUp(chart) {
  const names = Object.keys(chart.variants);
  chosen[chart.id] = names[0];
  const figure = document.getElementById(chart.id);
  if (names.length > 1) {
    const select = figure.querySelector("select");
    for (const name of names) select.add(new Option(name, name));
    select.addEventListener("change", () => { chosen[chart.id] = select.value; draw(chart); });
  }
  const keys = figure.querySelector(".keys");
  for (const line of chart.lines) {
    const item = document.createElement("li");
    const sample = el("svg", {width: 28, height: 8}, item);
    el("line", {x1: 0, x2: 28, y1: 4, y2: 4, class: "reference", "stroke-dasharray": line.dash}, sample);
    item.append(` ${line.label} (${format(line.value)})`);
    keys.appendChild(item);
  }
}

legend();
data.charts.forEach(setUp);
data.charts.forEach(draw);
document.body.dataset.rendered = data.charts.length;
