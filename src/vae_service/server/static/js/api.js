// The service's public API, as the page calls it: relative URLs (the page is served by the
// service itself), the key from the key field, the latency of each call, and errors as
// readable sentences.

const KEY_STORAGE = "vae-playground-api-key";

const EXPLAIN = {
  400: "The server could not read the input",
  401: "The service needs an API key: enter a valid one in the API key field",
  403: "This operation needs an admin key",
  404: "Not found",
  413: "The file is too large for this service",
  415: "The service does not take this kind of input",
  422: "The service refused these values",
  503: "The model is not ready, or the service is busy",
  504: "The request took too long",
};

export class ApiError extends Error {
  constructor(status, message, detail) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

function describeDetail(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    // FastAPI's validation errors: [{loc, msg, type}, ...]
    return detail
      .map((d) => {
        const where = (d.loc || []).filter((part) => part !== "query" && part !== "body").join(".");
        return where ? `${where}: ${d.msg}` : d.msg;
      })
      .join("; ");
  }
  return detail == null ? "" : JSON.stringify(detail);
}

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage disabled: the key lives until the page is closed
  }
}

export class Api {
  constructor() {
    this.key = storedKey();
    this.listeners = [];
  }

  onRequest(listener) {
    this.listeners.push(listener);
  }

  url(path, params = {}) {
    const url = new URL(path, document.baseURI);
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
    }
    return url;
  }

  // GET or POST ``path`` (relative: "models", "models/x/sample"); ``json`` or ``form`` is
  // the body. Resolves to the parsed JSON answer; rejects with an ApiError.
  async call(path, { params, json, form, method } = {}) {
    const headers = { Accept: "application/json" };
    if (this.key) headers.Authorization = `Bearer ${this.key}`;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    const url = this.url(path, params);
    const started = performance.now();
    let reply;
    let payload;
    try {
      reply = await fetch(url, { method: method || (body ? "POST" : "GET"), headers, body });
      const text = await reply.text();
      try {
        payload = text ? JSON.parse(text) : null;
      } catch {
        payload = text;
      }
    } catch (error) {
      this.notify(path, null, performance.now() - started);
      throw new ApiError(0, `Cannot reach the service (${error.message})`, null);
    }
    this.notify(path, reply.status, performance.now() - started);
    if (!reply.ok) {
      const detail = payload && typeof payload === "object" ? payload.detail : payload;
      const explained = EXPLAIN[reply.status] || "The request failed";
      const said = describeDetail(detail);
      const retry = reply.headers.get("Retry-After");
      const message =
        `${explained} (HTTP ${reply.status})` +
        (said ? `: ${said}` : "") +
        (retry ? `. Retry in ${retry} s.` : "");
      throw new ApiError(reply.status, message, detail);
    }
    return payload;
  }

  notify(path, status, ms) {
    for (const listener of this.listeners) listener({ path, status, ms });
  }
}
