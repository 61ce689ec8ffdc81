// Renders /openapi.json: operations grouped by tag, each with its role, body schema and statuses.
"use strict";

function element(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function resolve(doc, schema) {
  // one level of $ref, enough to show a body's fields
  if (schema && schema.$ref) return doc.components.schemas[schema.$ref.split("/").pop()] || schema;
  return schema;
}

function renderOperation(doc, path, method, op) {
  const roles = op["x-role"] || [];
  const summary = element("summary", {},
    element("span", { class: `method ${method}` }, method.toUpperCase()),
    element("span", { class: "path" }, path),
    element("span", {}, op.summary || ""),
    element("span", { class: `role ${roles.join(" ")}` }, roles.join(" | ")));
  const body = element("div", { class: "body" });
  if (op.description) body.append(element("p", {}, op.description));
  if (op.requestBody) {
    for (const [type, content] of Object.entries(op.requestBody.content)) {
      body.append(element("h4", {}, `Request body: ${type}`));
      body.append(element("pre", {}, JSON.stringify(resolve(doc, content.schema), null, 2)));
    }
  }
  const statuses = Object.entries(op.responses).map(([code, r]) => `${code} ${r.description || r.$ref.split("/").pop()}`);
  body.append(element("p", {}, `Responses: ${statuses.join(", ")}`));
  const details = element("details", { class: "op", "data-search": `${path} ${method} ${roles.join(" ")} ${op.tags}`.toLowerCase() });
  details.append(summary, body);
  return details;
}

async function main() {
  const container = document.getElementById("operations");
  const doc = await (await fetch("/openapi.json")).json();
  const byTag = new Map();
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const tag = (op.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(renderOperation(doc, path, method, op));
    }
  }
  container.replaceChildren();
  for (const [tag, ops] of [...byTag.entries()].sort()) {
    const section = element("section", { class: "tag" }, element("h2", {}, tag));
    section.append(...ops);
    container.append(section);
  }
  document.getElementById("filter").addEventListener("input", (event) => {
    const needle = event.target.value.trim().toLowerCase();
    for (const op of container.querySelectorAll("details.op")) {
      op.hidden = needle !== "" && !op.dataset.search.includes(needle);
    }
  });
}

main().catch((error) => {
  document.getElementById("operations").textContent = `Could not load /openapi.json: ${error}`;
});
