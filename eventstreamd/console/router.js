// Pages live in the fragment (`#/`, `#/integration/<id>`, `#/integration/<id>/edit`,
// `#/new/webhook`, `#/new/s3`): the server serves one document and never sees them.

export function parseRoute(hash) {
  let parts;
  try {
    parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  } catch {
    return { page: "list" };
  }
  if (parts[0] === "integration" && parts[1]) {
    return { page: parts[2] === "edit" ? "edit" : "detail", id: parts[1] };
  }
  if (parts[0] === "new" && (parts[1] === "webhook" || parts[1] === "s3")) {
    return { page: "create", kind: parts[1] };
  }
  return { page: "list" };
}

export const href = {
  list: () => "#/",
  detail: (id) => `#/integration/${encodeURIComponent(id)}`,
  edit: (id) => `#/integration/${encodeURIComponent(id)}/edit`,
  create: (kind) => `#/new/${kind}`,
};

export function go(hash) {
  location.hash = hash;
}
