// Building the page: elements and text only.
//
// Every string handed to h() becomes a text node or a property value, never
// markup, so nothing the daemon returns (ids, payloads, receiver answers, log
// reasons) can run or restyle the page. The served CSP backs this up: with
// Trusted Types and no policy, the browser refuses every HTML-parsing sink.

const PROPERTIES = new Set(["value", "checked", "disabled", "hidden", "open", "max"]);

/** h("a", {href: "#/", class: "x", on: {click: fn}}, "text", child, [more]) */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  setProps(node, props);
  append(node, children);
  return node;
}

/** An SVG element (for the sparklines); attributes only, no children from strings. */
export function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function setProps(node, props) {
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "on") {
      for (const [type, handler] of Object.entries(value)) node.addEventListener(type, handler);
    } else if (PROPERTIES.has(key)) node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace a node's children (text or elements). */
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** Set a node's text only when it changed (keeps selections and screen readers calm). */
export function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

/** A table with column headings and the given body; at phone width its rows read as
 * cards, each cell beside its heading (see `row`). */
export function table(className, headings, body) {
  return h("table", { class: `${className} cards` },
    h("thead", {}, h("tr", {}, headings.map((text) => h("th", { scope: "col", text })))),
    body);
}

/** A row whose cells carry their column's heading, for the card layout. */
export function row(headings, cells, props = {}) {
  cells.forEach((cell, index) => {
    if (headings[index]) cell.dataset.label = headings[index];
  });
  return h("tr", props, cells);
}

/** The one row of a table with nothing to show. */
export function emptyRow(columns, text) {
  return h("tr", {}, h("td", { colspan: columns, class: "muted", text }));
}

/** `render` wrapped to run only when its argument differs (as JSON) from the last one:
 * a refresh that brings nothing new leaves the page, its focus and open rows alone. */
export function whenChanged(render) {
  let last = null;
  return (value) => {
    const key = JSON.stringify(value);
    if (key === last) return;
    last = key;
    render(value);
  };
}

let counter = 0;
/** A page-unique id, for label/aria associations. */
export function uid(prefix) {
  counter += 1;
  return `${prefix}-${counter}`;
}
