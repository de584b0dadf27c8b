// The approvals page (/ui/approvals): jobs waiting for a decision, live, with per-call decisions.
//
// It uses the REST API like any client: GET /v1/jobs?status=AWAITING_APPROVAL to list,
// GET /v1/jobs/{id} for what each job waits for, POST /v1/jobs/{id}/approval to decide, and
// GET /v1/jobs/{id}/events (Server-Sent Events) to stay live. EventSource cannot send an
// Authorization header, so the stream is read with fetch() and parsed here; a dropped stream is
// resumed with Last-Event-ID. Browsers open at most six HTTP/1.1 connections per origin, so at
// most MAX_STREAMS cards stream at once; the others are refreshed by polling.
//
// Every text that comes from a job goes on the page through textContent (never innerHTML).
"use strict";

(() => {
  const KEY_STORAGE = "agentflow.apiKey";
  const RELIST_MS = 4000;
  const MAX_STREAMS = 4;
  const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELED", "REJECTED", "EXPIRED"]);
  const OUTCOMES = {
    approved: "· approved",
    edited: "· approved with edited parameters",
    rejected: "· rejected: not run",
    not_approved: "· not approved: not run",
  };
  const authRequired = document.body.dataset.auth !== "off";

  const jobsBox = document.getElementById("jobs");
  const statusLine = document.getElementById("status");
  const emptyNote = document.getElementById("empty");
  const keyForm = document.getElementById("key-form");
  const keyInput = document.getElementById("api-key");

  /** @type {Map<string, Card>} */
  const cards = new Map();
  const dismissed = new Set();
  let generation = 0; // bumped when the key changes: answers to older requests are dropped

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child); // strings become text nodes
    }
    return node;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function headers(extra) {
    const result = { Accept: "application/json", ...extra };
    if (authRequired && apiKey()) result.Authorization = "Bearer " + apiKey();
    return result;
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  function detailText(data, response) {
    const detail = data && data.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((d) => (Array.isArray(d.loc) ? d.loc.join(".") + ": " : "") + (d.msg || ""))
        .join("; ");
    }
    return `${response.status} ${response.statusText}`.trim();
  }

  async function api(method, path, body) {
    const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
    if (body !== undefined) init.body = JSON.stringify(body);
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, `the API did not answer (${err.message})`);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) throw new ApiError(response.status, detailText(data, response));
    return data;
  }

  function canonical(value) {
    if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
    if (value && typeof value === "object") {
      return "{" + Object.keys(value).sort().map((k) => JSON.stringify(k) + ":" + canonical(value[k])).join(",") + "}";
    }
    return JSON.stringify(value);
  }

  // Whether a parameters box holds JSON other than the planned parameters (unparsable text
  // counts as an edit; submitting reports it).
  function isEdited(text, original) {
    try {
      return canonical(JSON.parse(text)) !== canonical(original);
    } catch {
      return true;
    }
  }

  function resultText(result) {
    if (result.status === "success") return "· ran: success";
    if (result.error_type === "ToolCallRejected") return "· rejected: not run";
    if (result.error_type === "ToolCallNotApproved") return "· not approved: not run";
    return `· failed: ${result.error_type}`;
  }

  function usd(value) {
    if (value === null || value === undefined) return "unknown";
    return `${Number(value.toPrecision(3))} USD`;
  }

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  function setStatus(text) {
    statusLine.textContent = text;
  }

  // ------------------------------------------------------------------ Server-Sent Events

  // Reads an SSE body and calls onEvent({id, type, data}) per event (the WHATWG parsing rules:
  // lines end with CR, LF or CRLF; a blank line dispatches; ":" starts a comment).
  async function readEvents(body, signal, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    const abort = () => reader.cancel().catch(() => {});
    signal.addEventListener("abort", abort, { once: true });
    let buffer = "";
    let data = [];
    let type = "";
    let id = null;
    const line = (text) => {
      if (text === "") {
        if (data.length) onEvent({ id, type: type || "message", data: data.join("\n") });
        data = [];
        type = "";
        return;
      }
      if (text.startsWith(":")) return;
      const colon = text.indexOf(":");
      const field = colon === -1 ? text : text.slice(0, colon);
      let value = colon === -1 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") type = value;
      else if (field === "id" && !value.includes("\0")) id = value;
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let at;
        while ((at = buffer.search(/[\r\n]/)) !== -1) {
          if (buffer[at] === "\r" && at === buffer.length - 1) break; // CRLF split across chunks
          const width = buffer[at] === "\r" && buffer[at + 1] === "\n" ? 2 : 1;
          line(buffer.slice(0, at));
          buffer = buffer.slice(at + width);
        }
      }
    } finally {
      signal.removeEventListener("abort", abort);
    }
  }

  function startStreams() {
    let open = 0;
    for (const card of cards.values()) if (card.streaming) open += 1;
    for (const card of cards.values()) {
      if (open >= MAX_STREAMS) break;
      if (!card.streaming && !card.ended && !card.noStream) {
        card.stream();
        open += 1;
      }
    }
  }

  // ------------------------------------------------------------------ one job's card

  class Card {
    constructor(jobId, query) {
      this.jobId = jobId;
      this.loaded = false; // the approval request is rendered
      this.decided = false;
      this.ended = false;
      this.streaming = false;
      this.noStream = false; // the API has no event stream for it: polling only
      this.lastEventId = null;
      this.abort = null;
      this.hasDraft = false;
      this.draftFromEvent = false;
      this.calls = [];
      this.gen = generation;
      const titleId = `job-${jobId}-title`;
      this.title = el("h2", { id: titleId }, "Job ", el("code", { text: jobId }));
      this.live = el("span", { class: "live", text: "" });
      this.query = el("p", { class: "query", text: query || "" });
      this.stateLine = el("p", { class: "state", role: "status", text: "Loading…" });
      this.answer = el("section", { class: "answer", "aria-label": `Answer of job ${jobId}`, hidden: true });
      this.body = el("div", { class: "card-body" });
      this.root = el(
        "section",
        { class: "card", "aria-labelledby": titleId, "data-job-id": jobId },
        el("div", { class: "card-head" }, this.title, this.live),
        this.query,
        this.stateLine,
        this.answer,
        this.body,
      );
    }

    async refresh() {
      const gen = this.gen;
      try {
        const job = await api("GET", `/v1/jobs/${encodeURIComponent(this.jobId)}`);
        if (gen === generation) this.update(job);
      } catch (err) {
        if (gen !== generation) return;
        if (err.status === 404) this.finish("GONE", "The job is no longer visible to this key (404).");
        else this.stateLine.textContent = `Could not read the job: ${err.message}`;
      }
    }

    update(job) {
      this.query.textContent = job.query || "";
      const progress = job.progress || {};
      const request = progress.approval_request;
      if (!this.loaded && request && job.status === "AWAITING_APPROVAL") this.render(job, request);
      if (this.loaded && progress.draft && !this.draftFromEvent) this.setDraft(progress.draft);
      const record = progress.approval_record || (job.result && job.result.approval_record);
      if (record) this.applyRecord(record);
      if (TERMINAL.has(job.status)) {
        const answer = job.result && job.result.answer;
        this.finish(job.status, job.error || (job.result && job.result.error) || "", answer || "");
      } else if (job.status === "AWAITING_APPROVAL") {
        if (!this.loaded) this.stateLine.textContent = "Waiting for its approval request…";
        else if (!this.decided) this.stateLine.textContent = "Waiting for a decision.";
      } else if (!this.loaded) {
        this.stateLine.textContent = `The job is ${job.status}.`;
      } else if (!this.decided) {
        this.markDecided(`Decided elsewhere; the job is ${job.status}.`);
      }
    }

    render(job, request) {
      this.loaded = true;
      this.body.replaceChildren();
      const gated = new Set(request.gated_call_ids || []);
      const meta = el(
        "dl",
        { class: "meta" },
        el("dt", { text: "Tier" }),
        el("dd", { text: request.tier || job.tier || "not chosen" }),
        el("dt", { text: "Estimated cost" }),
        el("dd", { text: usd(request.estimated_cost_usd) }),
        el("dt", { text: "Waiting since" }),
        el("dd", { text: when(request.requested_at) }),
        el("dt", { text: "Expires" }),
        el("dd", { text: `${when(request.expires_at)} (then: ${request.timeout_action || "expire"})` }),
      );
      // Shown once an approval_reminder event arrives.
      this.waiting = el("dd", { hidden: true });
      this.waitingLabel = el("dt", { text: "Reminder", hidden: true });
      meta.append(this.waitingLabel, this.waiting);
      const reasons = el("ul", { class: "reasons" });
      for (const reason of request.reasons || []) reasons.append(el("li", { text: reason }));
      this.draft = el("div", { class: "draft muted", text: "No draft yet." });
      const draftBox = el("section", { class: "draft-box", "aria-label": `Draft of job ${this.jobId}` },
        el("h3", { text: "Draft" }), this.draft);

      const form = el("form", { class: "decision", "aria-label": `Decision on job ${this.jobId}` });
      form.addEventListener("submit", (event) => event.preventDefault());
      const callsBox = el("div", { class: "calls" }, el("h3", { text: "Planned calls" }));
      if (!(request.calls || []).length) callsBox.append(el("p", { class: "muted", text: "No tool calls." }));
      this.calls = (request.calls || []).map((planned, index) => {
        const call = planned.call;
        const base = `job-${this.jobId}-call-${index}`;
        const original = call.parameters || {};
        const originalText = JSON.stringify(original, null, 2);
        const needs = gated.has(call.id);
        const textarea = el("textarea", {
          id: `${base}-params`,
          rows: Math.min(12, originalText.split("\n").length + 1),
          spellcheck: "false",
          "aria-describedby": `${base}-error`,
        });
        textarea.value = originalText;
        const approve = el("input", { type: "radio", id: `${base}-approve`, name: `${base}-action`, value: "approve" });
        const reject = el("input", { type: "radio", id: `${base}-reject`, name: `${base}-action`, value: "reject" });
        approve.checked = true;
        const error = el("p", { id: `${base}-error`, class: "error", "aria-live": "polite" });
        const edited = el("p", { class: "edited", text: "" });
        const outcome = el("span", { class: "outcome" });
        const fieldset = el(
          "fieldset",
          { class: needs ? "call gated" : "call" },
          el("legend", {}, "Call ", el("code", { text: call.id }), ": ", el("strong", { text: call.name }),
            needs ? el("span", { class: "badge", text: "needs approval" }) : null),
          el("p", { class: "call-meta" }, "Tool ", el("code", { text: call.name }), " · call id ",
            el("code", { text: call.id }), planned.origin === "planner" ? " · proposed by the planner" : "", " ", outcome),
          el("label", { for: textarea.id, text: `Parameters of ${call.id} (JSON)` }),
          textarea,
          edited,
          error,
          el("div", { class: "choices" },
            approve, el("label", { for: approve.id, text: "Approve" }),
            reject, el("label", { for: reject.id, text: "Reject" })),
        );
        const entry = { id: call.id, name: call.name, original, originalText, textarea, approve, reject, error, outcome, fieldset };
        reject.addEventListener("change", () => fieldset.classList.toggle("rejected", reject.checked));
        approve.addEventListener("change", () => fieldset.classList.toggle("rejected", reject.checked));
        textarea.addEventListener("input", () => {
          error.textContent = "";
          this.formError.textContent = "";
          edited.textContent = isEdited(textarea.value, original) ? "Edited: the call runs with these parameters if approved." : "";
        });
        callsBox.append(fieldset);
        return entry;
      });
      const commentId = `job-${this.jobId}-comment`;
      this.comment = el("textarea", { id: commentId, rows: 2, maxlength: 2000 });
      this.submitButton = el("button", { type: "button", class: "primary", text: "Submit decision" });
      this.rejectButton = el("button", { type: "button", class: "danger", text: "Reject job" });
      this.formError = el("p", { class: "error", role: "alert" });
      this.submitButton.addEventListener("click", () => this.submit(true));
      this.rejectButton.addEventListener("click", () => this.submit(false));
      form.append(
        callsBox,
        el("label", { for: commentId, text: "Comment" }),
        this.comment,
        el("div", { class: "buttons" }, this.submitButton, this.rejectButton),
        this.formError,
      );
      this.form = form;
      this.body.append(meta, el("h3", { text: "Why it waits" }), reasons, draftBox, form);
      if (request.draft) this.setDraft(request.draft);
      this.stateLine.textContent = "Waiting for a decision.";
    }

    setDraft(text) {
      if (!this.draft) return;
      this.draft.textContent = text;
      this.draft.classList.remove("muted");
      this.hasDraft = true;
    }

    // The decision body: per-call actions, or null when a parameters box does not parse.
    decision(approved) {
      const comment = this.comment.value.trim() || null;
      if (!approved) return { approved: false, comment, calls: [] };
      const calls = [];
      let bad = false;
      for (const call of this.calls) {
        call.error.textContent = "";
        if (call.reject.checked) {
          calls.push({ call_id: call.id, action: "reject" });
          continue;
        }
        if (call.textarea.value === call.originalText) {
          calls.push({ call_id: call.id, action: "approve" });
          continue;
        }
        let parameters;
        try {
          parameters = JSON.parse(call.textarea.value);
        } catch (err) {
          call.error.textContent = `Not valid JSON: ${err.message}`;
          bad = true;
          continue;
        }
        if (parameters === null || typeof parameters !== "object" || Array.isArray(parameters)) {
          call.error.textContent = "The parameters must be a JSON object.";
          bad = true;
        } else if (canonical(parameters) === canonical(call.original)) {
          calls.push({ call_id: call.id, action: "approve" });
        } else {
          calls.push({ call_id: call.id, action: "edit", parameters });
        }
      }
      return bad ? null : { approved: true, comment, calls };
    }

    async submit(approved) {
      this.formError.textContent = "";
      const body = this.decision(approved);
      if (body === null) {
        this.formError.textContent = "Fix the parameters marked above, then submit again.";
        return;
      }
      this.setDisabled(true);
      try {
        const outcome = await api("POST", `/v1/jobs/${encodeURIComponent(this.jobId)}/approval`, body);
        this.markDecided(
          `${outcome.approved ? "Approved" : "Rejected"} by ${outcome.reviewer}; the job is ${outcome.status}.`,
        );
        relist(); // the count of waiting jobs changed
      } catch (err) {
        this.formError.textContent = err.status ? `${err.status}: ${err.message}` : err.message;
        this.setDisabled(this.decided);
        if (err.status === 409) this.refresh();
      }
    }

    setDisabled(disabled) {
      if (!this.form) return;
      for (const control of this.form.elements) control.disabled = disabled;
    }

    markDecided(text) {
      this.decided = true;
      this.setDisabled(true);
      this.root.classList.add("decided");
      if (!this.ended) this.stateLine.textContent = text;
    }

    applyRecord(record) {
      const outcomes = new Map((record.calls || []).map((c) => [c.call_id, c.outcome]));
      for (const call of this.calls) {
        const outcome = outcomes.get(call.id);
        if (outcome && !call.outcome.dataset.result) call.outcome.textContent = OUTCOMES[outcome] || `· ${outcome}`;
      }
      if (!this.decided) {
        const who = record.reviewer ? ` by ${record.reviewer}` : "";
        this.markDecided(`Decision: ${record.outcome}${who}${record.comment ? ` (“${record.comment}”)` : ""}.`);
      }
    }

    finish(status, detail, answer) {
      this.ended = true;
      this.decided = true;
      this.setDisabled(true);
      // An open event stream is left to end by itself (the API closes it after the job's last
      // event), so the per-call results still arrive.
      this.root.classList.add("decided", "ended");
      this.stateLine.textContent = `Finished: ${status}${detail ? ` — ${detail}` : ""}`;
      if (answer) {
        this.answer.replaceChildren(el("h3", { text: "Answer" }), el("div", { class: "draft", text: answer }));
        this.answer.hidden = false;
      }
      if (!this.root.querySelector(".dismiss")) {
        const dismiss = el("button", { type: "button", class: "dismiss", text: "Remove from page" });
        dismiss.addEventListener("click", () => {
          if (this.abort) this.abort.abort();
          dismissed.add(this.jobId);
          cards.delete(this.jobId);
          this.root.remove();
          updateEmpty();
        });
        this.root.append(dismiss);
      }
    }

    onEvent(message) {
      if (message.id !== null && message.id !== "") this.lastEventId = message.id;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      const type = event.type || message.type;
      if (type === "approval_requested" && !this.loaded) this.refresh();
      else if (type === "initial_response") {
        this.draftFromEvent = true;
        this.setDraft(event.text || "");
      } else if (type === "approval_reminder" && this.waiting) {
        this.waiting.textContent = `still waiting after ${Math.round(event.waiting_s)} s`;
        this.waiting.hidden = false;
        this.waitingLabel.hidden = false;
      } else if (type === "approval_decided" && event.record) this.applyRecord(event.record);
      else if (type === "tool_result" && event.result) {
        const call = this.calls.find((c) => c.id === event.result.call_id);
        if (call) {
          call.outcome.dataset.result = event.result.status;
          call.outcome.textContent = resultText(event.result);
        }
      } else if (type === "final_response") this.finish(event.status || "COMPLETED", "", event.answer || "");
      else if (type === "response_error") this.finish(event.status, event.error || "");
    }

    async stream() {
      this.streaming = true;
      const controller = new AbortController();
      this.abort = controller;
      const url = `/v1/jobs/${encodeURIComponent(this.jobId)}/events`;
      let delay = 500;
      while (!this.ended && !controller.signal.aborted) {
        try {
          const extra = { Accept: "text/event-stream" };
          if (this.lastEventId !== null) extra["Last-Event-ID"] = this.lastEventId;
          const response = await fetch(url, { headers: headers(extra), signal: controller.signal, cache: "no-store" });
          const type = response.headers.get("content-type") || "";
          if (response.status >= 400 && response.status < 500 && response.status !== 429) {
            this.noStream = true; // no stream for this job (or no events endpoint): poll instead
            break;
          }
          if (!response.ok || !response.body || !type.startsWith("text/event-stream")) {
            throw new Error(`HTTP ${response.status}`);
          }
          this.live.textContent = "● live";
          delay = 500;
          await readEvents(response.body, controller.signal, (message) => this.onEvent(message));
        } catch {
          // dropped or refused: reconnect below, resuming after lastEventId
        }
        this.live.textContent = "";
        if (this.ended || controller.signal.aborted) break;
        await sleep(delay);
        delay = Math.min(delay * 2, 15000);
      }
      this.streaming = false;
      if (this.abort === controller) this.abort = null;
      startStreams(); // a connection is free for another card
    }
  }

  // ------------------------------------------------------------------ the list

  function updateEmpty() {
    emptyNote.hidden = cards.size > 0;
  }

  async function relist() {
    if (authRequired && !apiKey()) {
      setStatus("Enter an API key with the read and approve scopes to see waiting jobs.");
      keyInput.focus();
      return;
    }
    const gen = generation;
    let page;
    try {
      page = await api("GET", "/v1/jobs?status=AWAITING_APPROVAL&limit=50");
    } catch (err) {
      if (gen !== generation) return;
      const hint = err.status === 401 || err.status === 403 ? " Check the API key." : "";
      setStatus(`Could not list the waiting jobs: ${err.message}.${hint}`);
      return;
    }
    if (gen !== generation) return;
    const waiting = new Set(page.data.map((job) => job.job_id));
    for (const job of [...page.data].reverse()) {
      if (cards.has(job.job_id) || dismissed.has(job.job_id)) continue;
      const card = new Card(job.job_id, job.query);
      cards.set(job.job_id, card);
      jobsBox.prepend(card.root); // newest first
      card.refresh();
    }
    for (const card of cards.values()) {
      if (card.ended) continue;
      // Streaming cards learn what changes from events; the others poll while something is due:
      // the job left the list, its request is not shown yet, its end or its draft is awaited.
      const left = !waiting.has(card.jobId);
      const due = !card.streaming && (card.decided || !card.hasDraft);
      if (left || !card.loaded || due) card.refresh();
    }
    startStreams();
    updateEmpty();
    const time = new Date().toLocaleTimeString();
    setStatus(`${page.count} job${page.count === 1 ? "" : "s"} waiting for approval · refreshed ${time}`);
  }

  function reset() {
    generation += 1;
    for (const card of cards.values()) if (card.abort) card.abort.abort();
    cards.clear();
    dismissed.clear();
    jobsBox.replaceChildren();
    updateEmpty();
  }

  if (authRequired) {
    keyForm.hidden = false;
    keyInput.placeholder = apiKey() ? "a key is set for this tab" : "af_…";
    keyInput.required = !apiKey();
    keyForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const key = keyInput.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORAGE, key);
      keyInput.value = "";
      keyInput.placeholder = "a key is set for this tab";
      reset();
      relist();
    });
    document.getElementById("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      keyInput.placeholder = "af_…";
      reset();
      relist();
    });
  }

  relist();
  setInterval(relist, RELIST_MS);
})();
