// Midosoc review dashboard: sign-in, the live queue of held requests, the
// forensic view of one request, and approve / deny.
//
// Security: everything shown here may come from an agent (URL, headers,
// body, intent) and may be aimed at the analyst. It is only ever written
// with textContent or as attribute-free text nodes; innerHTML is never used.
// State changes carry the session's CSRF token in X-CSRF-Token.

(function () {
  "use strict";

  const STATUSES_DONE = ["approved", "denied", "withdrawn", "expired"];
  const EVENT_KINDS = ["pending", "decided", "withdrawn", "expired", "executed"];
  const POLL_EVERY_MS = 5000;
  const RECONNECT_MS = 3000;
  const EXPIRING_MS = 2 * 60 * 1000;
  const RENDER_DELAY_MS = 30;

  const state = {
    me: null,
    csrf: null,
    approvals: new Map(),
    tab: "pending",
    selected: null,
    fresh: new Set(),
    source: null,
    pollTimer: null,
    reconnectTimer: null,
    renderTimer: null,
    busy: false,
  };

  const $ = (id) => document.getElementById(id);

  // ---- HTTP -------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || "request failed (" + status + ")");
      this.status = status;
      this.problem = problem;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
    const response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 204) return null;
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      if (response.status === 401 && state.me) signedOut("Your session ended. Sign in again.");
      throw new ApiError(response.status, data);
    }
    return data;
  }

  // ---- Formatting -------------------------------------------------------

  function span(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + String(s % 60).padStart(2, "0") + "s";
    const h = Math.floor(m / 60);
    if (h < 24) return h + "h " + String(m % 60).padStart(2, "0") + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function ago(iso) {
    return span(Date.now() - Date.parse(iso)) + " ago";
  }

  function until(iso) {
    const left = Date.parse(iso) - Date.now();
    return left <= 0 ? "now" : "in " + span(left);
  }

  function clock(iso) {
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
  }

  function pathOf(url) {
    const i = url.indexOf("://");
    if (i < 0) return url;
    const slash = url.indexOf("/", i + 3);
    return slash < 0 ? "/" : url.slice(slash);
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // ---- State ------------------------------------------------------------

  // Events may arrive out of order with list reloads; an approval only ever
  // moves forward (pending, then decided or closed, then executed), so the
  // most advanced copy wins.
  function rank(a) {
    return (a.status === "pending" ? 0 : 2) + (a.executed_at ? 1 : 0);
  }

  function upsert(approval) {
    const known = state.approvals.get(approval.id);
    if (!known || rank(approval) >= rank(known)) {
      state.approvals.set(approval.id, approval);
      return true;
    }
    return false;
  }

  function doneAt(a) {
    return Date.parse((a.decision && a.decision.decided_at) || a.closed_at || a.created_at);
  }

  function visible() {
    const all = Array.from(state.approvals.values());
    if (state.tab === "pending") {
      return all
        .filter((a) => a.status === "pending")
        .sort((x, y) => Date.parse(x.expires_at) - Date.parse(y.expires_at));
    }
    return all
      .filter((a) => STATUSES_DONE.includes(a.status))
      .sort((x, y) => doneAt(y) - doneAt(x));
  }

  async function reload() {
    const [pending, recent] = await Promise.all([
      api("GET", "/api/approvals?status=pending&limit=1000"),
      api("GET", "/api/approvals?limit=200"),
    ]);
    for (const a of recent.approvals) upsert(a);
    for (const a of pending.approvals) upsert(a);
    // A pending approval the server no longer lists as pending was decided
    // while we were not looking: take the server's copy.
    const stillPending = new Set(pending.approvals.map((a) => a.id));
    for (const a of state.approvals.values()) {
      if (a.status === "pending" && !stillPending.has(a.id)) {
        try {
          upsert(await api("GET", "/api/approvals/" + encodeURIComponent(a.id)));
        } catch (e) {
          if (e.status === 404) state.approvals.delete(a.id);
        }
      }
    }
    render();
  }

  // ---- Live connection --------------------------------------------------

  function setLive(mode) {
    const live = $("live");
    live.dataset.state = mode;
    live.hidden = mode === "idle";
    $("live-label").textContent = {
      live: "Live",
      connecting: "Connecting…",
      down: "Disconnected — retrying",
      idle: "Not connected",
    }[mode];
    $("offline-note").hidden = mode !== "down";
  }

  function connect() {
    disconnect();
    setLive("connecting");
    const source = new EventSource("/api/events");
    state.source = source;

    source.onopen = () => {
      setLive("live");
      stopPolling();
      reload().catch(() => {});
    };
    for (const kind of EVENT_KINDS) {
      source.addEventListener(kind, (message) => {
        let event;
        try {
          event = JSON.parse(message.data);
        } catch (_) {
          return;
        }
        const isNew = !state.approvals.has(event.approval.id);
        if (upsert(event.approval)) {
          if (kind === "pending" && isNew) state.fresh.add(event.approval.id);
          scheduleRender();
        }
      });
    }
    source.addEventListener("resync", () => {
      reload().catch(() => {});
    });
    source.onerror = () => {
      setLive("down");
      startPolling();
      // A closed source (the server refused it) does not retry by itself.
      if (source.readyState === EventSource.CLOSED) {
        clearTimeout(state.reconnectTimer);
        state.reconnectTimer = setTimeout(() => {
          if (state.me && state.source === source) connect();
        }, RECONNECT_MS);
      }
    };
  }

  function disconnect() {
    if (state.source) state.source.close();
    state.source = null;
    clearTimeout(state.reconnectTimer);
    stopPolling();
  }

  // Polling only while the event stream is down.
  function startPolling() {
    if (state.pollTimer) return;
    state.pollTimer = setInterval(() => {
      if (state.me) reload().catch(() => {});
    }, POLL_EVERY_MS);
  }

  function stopPolling() {
    clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  // ---- Rendering: queue -------------------------------------------------

  // A burst of events (a replay after reconnecting) renders once. A timer,
  // not an animation frame, so a background tab's title still counts.
  function scheduleRender() {
    if (state.renderTimer) return;
    state.renderTimer = setTimeout(() => {
      state.renderTimer = null;
      render();
    }, RENDER_DELAY_MS);
  }

  function render() {
    const items = visible();
    const pendingCount = Array.from(state.approvals.values()).filter(
      (a) => a.status === "pending",
    ).length;
    const count = $("pending-count");
    count.textContent = String(pendingCount);
    count.classList.toggle("busy", pendingCount > 0);
    document.title = (pendingCount ? "(" + pendingCount + ") " : "") + "Midosoc review";

    // A request someone else decided stays open until the analyst moves
    // on, so it does not vanish mid-read; it then shows the decision.
    if (!state.selected || !state.approvals.has(state.selected)) {
      state.selected = items.length ? items[0].id : null;
    }

    const list = $("queue-list");
    clear(list);
    for (const a of items) list.appendChild(queueItem(a));
    state.fresh.clear();
    $("queue-empty").hidden = items.length > 0;
    $("queue-empty").textContent =
      state.tab === "pending"
        ? "No requests are waiting. Held requests appear here as they arrive."
        : "No decided requests yet.";

    renderDetail();
  }

  function queueItem(a) {
    const li = el("li", "queue-item stripe-" + a.assessment.risk);
    li.setAttribute("role", "option");
    li.dataset.id = a.id;
    li.setAttribute("aria-selected", String(a.id === state.selected));
    if (state.fresh.has(a.id)) li.classList.add("fresh");

    const line = el("div", "qi-line");
    line.appendChild(el("span", "qi-method", a.method));
    const url = el("span", "qi-url", pathOf(a.url));
    url.title = a.url;
    line.appendChild(url);
    li.appendChild(line);

    const meta = el("div", "qi-meta");
    meta.appendChild(el("span", "risk-word risk-" + a.assessment.risk, a.assessment.risk));
    meta.appendChild(el("span", null, a.agent));
    if (a.status === "pending") {
      meta.appendChild(el("span", null, ago(a.created_at))).dataset.since = a.created_at;
      const left = Date.parse(a.expires_at) - Date.now();
      const exp = el("span", left < EXPIRING_MS ? "expiring" : null, "expires " + until(a.expires_at));
      exp.dataset.until = a.expires_at;
      exp.dataset.prefix = "expires ";
      meta.appendChild(exp);
    } else {
      meta.appendChild(el("span", null, outcomeWord(a)));
      if (a.decision) meta.appendChild(el("span", null, "by " + a.decision.analyst.name));
    }
    li.appendChild(meta);

    li.addEventListener("click", () => select(a.id));
    return li;
  }

  function outcomeWord(a) {
    if (a.status === "approved") return a.executed_at ? "approved · executed" : "approved";
    return a.status;
  }

  // ---- Rendering: detail ------------------------------------------------

  function renderDetail() {
    const a = state.selected && state.approvals.get(state.selected);
    $("detail-empty").hidden = !!a;
    $("detail-body").hidden = !a;
    if (!a) return;
    const body = $("detail-body");
    const changed = body.dataset.id !== a.id;
    body.dataset.id = a.id;

    const risk = $("d-risk");
    risk.className = "risk-badge risk-" + a.assessment.risk;
    risk.textContent = a.assessment.risk + " risk";
    $("d-method").textContent = a.method;
    $("d-url").textContent = a.url;
    const status = $("d-status");
    status.className = "status-chip " + a.status;
    status.textContent = outcomeWord(a);

    $("d-agent").textContent = a.agent;
    const waited = $("d-waited");
    const expires = $("d-expires");
    $("d-waited-label").textContent = "Held";
    $("d-expires-label").textContent = a.status === "pending" ? "Expires" : "Waited";
    if (a.status === "pending") {
      waited.textContent = ago(a.created_at);
      waited.dataset.since = a.created_at;
      expires.textContent = until(a.expires_at);
      expires.dataset.until = a.expires_at;
      expires.title = clock(a.expires_at);
    } else {
      delete waited.dataset.since;
      delete expires.dataset.until;
      waited.textContent = clock(a.created_at);
      expires.textContent = span(doneAt(a) - Date.parse(a.created_at));
      expires.title = "";
    }
    expires.classList.toggle(
      "expiring",
      a.status === "pending" && Date.parse(a.expires_at) - Date.now() < EXPIRING_MS,
    );

    const confidence = Math.round(a.assessment.confidence * 100);
    $("d-confidence").textContent = confidence + "%";
    $("d-confidence-bar").style.width = confidence + "%";
    $("d-classifier").textContent = a.assessment.classifier;
    $("d-id").textContent = a.id;
    $("d-rationale").textContent = a.assessment.rationale;

    const markers = $("d-markers");
    clear(markers);
    for (const m of a.assessment.markers) {
      const tr = el("tr");
      tr.appendChild(el("td", null, m.rule));
      tr.appendChild(el("td", null, m.location));
      tr.appendChild(el("td", null, m.matched));
      markers.appendChild(tr);
    }
    if (!a.assessment.markers.length) {
      const tr = el("tr");
      tr.appendChild(el("td", "muted", "no rule fired"));
      markers.appendChild(tr);
    }

    $("d-operation-panel").hidden = !a.operation;
    if (a.operation) {
      $("d-protocol").textContent = a.operation.protocol;
      $("d-operation").textContent = a.operation.name;
      $("d-operation-detail").hidden = !a.operation.detail;
      $("d-operation-detail").textContent = a.operation.detail || "";
    }

    $("d-intent-panel").hidden = !a.intent;
    $("d-intent").textContent = a.intent || "";

    $("d-body").textContent = bodyText(a.body);
    $("d-body-meta").textContent =
      a.body.size === 0
        ? "(empty)"
        : "(" + a.body.size + " bytes" + (a.body.truncated ? ", preview truncated" : "") + ")";

    const headers = $("d-headers");
    clear(headers);
    for (const h of a.headers) {
      const tr = el("tr");
      tr.appendChild(el("td", null, h.name));
      tr.appendChild(el("td", null, h.value));
      headers.appendChild(tr);
    }

    renderDecision(a, changed);
  }

  function bodyText(body) {
    if (!body.preview) return body.size ? "(no text preview)" : "(no body)";
    if (!body.truncated) {
      try {
        return JSON.stringify(JSON.parse(body.preview), null, 2);
      } catch (_) {
        // Not JSON: show as received.
      }
    }
    return body.preview + (body.truncated ? "\n…" : "");
  }

  function renderDecision(a, changed) {
    const pending = a.status === "pending";
    const canDecide = state.me && state.me.can_decide;
    $("decide-form").hidden = !(pending && canDecide);
    $("viewer-note").hidden = !(pending && !canDecide);
    if (changed) {
      $("reason").value = "";
      $("decide-error").hidden = true;
    }

    const decided = $("d-decided");
    decided.hidden = pending;
    if (pending) return;
    const line = $("d-decision-line");
    const reason = $("d-decision-reason");
    if (a.decision) {
      const verb = a.decision.outcome === "approve" ? "Approved" : "Denied";
      line.textContent =
        verb + " by " + a.decision.analyst.name + " · " + clock(a.decision.decided_at) +
        (a.executed_at ? " · executed " + clock(a.executed_at) : "");
      reason.hidden = !a.decision.reason;
      reason.textContent = a.decision.reason || "";
    } else {
      line.textContent =
        (a.status === "withdrawn" ? "Withdrawn by the agent" : "Expired undecided") +
        (a.closed_at ? " · " + clock(a.closed_at) : "");
      reason.hidden = true;
    }
  }

  // Relative times tick without re-rendering.
  function tick() {
    for (const node of document.querySelectorAll("[data-since]")) {
      node.textContent = ago(node.dataset.since);
    }
    for (const node of document.querySelectorAll("[data-until]")) {
      node.textContent = (node.dataset.prefix || "") + until(node.dataset.until);
    }
  }

  // ---- Actions ----------------------------------------------------------

  function select(id) {
    state.selected = id;
    render();
    const item = document.querySelector('.queue-item[aria-selected="true"]');
    if (item) item.scrollIntoView({ block: "nearest" });
  }

  function move(step) {
    const items = visible();
    if (!items.length) return;
    const at = items.findIndex((a) => a.id === state.selected);
    const next = Math.min(items.length - 1, Math.max(0, at < 0 ? 0 : at + step));
    select(items[next].id);
  }

  function setTab(tab) {
    state.tab = tab;
    $("tab-pending").setAttribute("aria-selected", String(tab === "pending"));
    $("tab-history").setAttribute("aria-selected", String(tab === "history"));
    state.selected = null;
    render();
  }

  function showDecideError(text) {
    const node = $("decide-error");
    node.textContent = text;
    node.hidden = false;
  }

  async function decide(outcome) {
    const a = state.selected && state.approvals.get(state.selected);
    if (!a || a.status !== "pending" || !state.me || !state.me.can_decide || state.busy) return;
    const reason = $("reason").value.trim();
    if (outcome === "deny" && !reason) {
      showDecideError("A denial needs a reason: the agent's owner will read it.");
      $("reason").focus();
      return;
    }

    state.busy = true;
    $("approve").disabled = true;
    $("deny").disabled = true;
    try {
      const body = reason ? { reason } : {};
      const updated = await api("POST", "/api/approvals/" + encodeURIComponent(a.id) + "/" + outcome, body);
      upsert(updated);
      $("reason").blur();
      state.selected = null;
      render();
    } catch (e) {
      if (e.status === 409) {
        banner("Someone else already dealt with this request (" + (e.problem && e.problem.approval_status) + ").");
        reload().catch(() => {});
      } else {
        showDecideError(e.message);
      }
    } finally {
      state.busy = false;
      $("approve").disabled = false;
      $("deny").disabled = false;
    }
  }

  function banner(text) {
    $("banner-text").textContent = text;
    $("banner").hidden = false;
  }

  // ---- Sign-in and sign-out ---------------------------------------------

  function signedIn(session) {
    state.me = session;
    state.csrf = session.csrf_token || null;
    $("who-name").textContent = session.analyst.name;
    $("who-role").textContent = session.role;
    $("who").hidden = false;
    $("signin-view").hidden = true;
    $("app-view").hidden = false;
    reload().catch((e) => banner(e.message));
    connect();
  }

  function signedOut(message) {
    disconnect();
    state.me = null;
    state.csrf = null;
    state.approvals.clear();
    state.selected = null;
    setLive("idle");
    $("who").hidden = true;
    $("app-view").hidden = true;
    $("signin-view").hidden = false;
    const error = $("signin-error");
    error.hidden = !message;
    error.textContent = message || "";
    $("token").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("token");
    const token = input.value.trim();
    if (!token) return;
    try {
      const session = await api("POST", "/api/session", { token });
      input.value = "";
      $("signin-error").hidden = true;
      signedIn(session);
    } catch (e) {
      const error = $("signin-error");
      error.textContent =
        e.status === 401 ? "That is not a valid analyst token." : e.message;
      error.hidden = false;
    }
  }

  async function signOut() {
    try {
      const answer = await api("DELETE", "/api/session");
      // Signed in with the identity provider: end the session there too.
      if (answer && answer.end_session_url) {
        window.location.assign(answer.end_session_url);
        return;
      }
    } catch (_) {
      // Signed out either way.
    }
    signedOut();
  }

  // Offers the identity provider's sign-in when the gateway has one.
  async function showSignInMethods() {
    try {
      const methods = await api("GET", "/auth/methods");
      const sso = methods && methods.single_sign_on;
      if (!sso) return;
      $("sso-link").textContent = "Sign in with " + sso.label;
      $("sso-link").setAttribute("href", sso.url);
      $("sso").hidden = false;
    } catch (_) {
      // Token sign-in still works.
    }
  }

  // ---- Keyboard ---------------------------------------------------------

  function onKey(event) {
    if (!state.me || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    const typing = target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement;

    if (event.key === "Escape") {
      $("help").hidden = true;
      if (typing) target.blur();
      return;
    }
    if (typing) {
      if (target.id === "reason" && event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        decide("deny");
      }
      return;
    }

    const actions = {
      j: () => move(1),
      ArrowDown: () => move(1),
      k: () => move(-1),
      ArrowUp: () => move(-1),
      a: () => decide("approve"),
      d: () => {
        if (!$("decide-form").hidden) $("reason").focus();
      },
      1: () => setTab("pending"),
      2: () => setTab("history"),
      "?": () => {
        $("help").hidden = !$("help").hidden;
      },
    };
    const action = actions[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  }

  // ---- Start ------------------------------------------------------------

  function start() {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("tab-pending").addEventListener("click", () => setTab("pending"));
    $("tab-history").addEventListener("click", () => setTab("history"));
    $("approve").addEventListener("click", () => decide("approve"));
    $("deny").addEventListener("click", () => decide("deny"));
    $("help-close").addEventListener("click", () => {
      $("help").hidden = true;
    });
    $("banner-close").addEventListener("click", () => {
      $("banner").hidden = true;
    });
    document.addEventListener("keydown", onKey);
    setInterval(tick, 1000);

    showSignInMethods();
    api("GET", "/api/session")
      .then(signedIn)
      .catch(() => signedOut());
  }

  start();
})();
