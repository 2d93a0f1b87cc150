// The enrollment page: submit once, show the server's field errors, then follow the saga live.
//
// One Idempotency-Key per submission: it is made when a submission starts and kept until the
// server has answered it, so pressing the button again after a network failure or a 5xx retries
// the same submission and the gateway enrolls once. Editing a field starts a new submission.
"use strict";

(function () {
  // The saga's statuses, each with its label and whether it is terminal, as the gateway declares
  // them (written into the page by the gateway).
  const STATUSES = JSON.parse(document.getElementById("statuses").textContent);
  const statusLabel = (status) => (STATUSES[status] ? STATUSES[status].label : status);
  const isTerminal = (status) => Boolean(STATUSES[status] && STATUSES[status].terminal);
  const FIELDS = ["name", "email"];

  const form = document.getElementById("enroll");
  const button = document.getElementById("submit");
  const formError = document.getElementById("form-error");
  const progress = document.getElementById("progress");
  const timeline = document.getElementById("timeline");
  const outcome = document.getElementById("outcome");
  const again = document.getElementById("again");
  const confirmation = document.getElementById("confirmation");
  const confirmationText = document.getElementById("confirmation-text");
  const resendButton = document.getElementById("resend");
  const resendNote = document.getElementById("resend-note");
  const announce = document.getElementById("announce");

  let key = null; // the current submission's Idempotency-Key
  let submitting = false;
  let source = null;

  function newKey() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") {
      return window.crypto.randomUUID();
    }
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function setFieldError(field, message) {
    const input = document.getElementById(field);
    const error = document.getElementById(field + "-error");
    if (message) {
      error.textContent = message;
      error.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", error.id);
    } else {
      error.textContent = "";
      error.hidden = true;
      input.removeAttribute("aria-invalid");
      input.removeAttribute("aria-describedby");
    }
  }

  function clearErrors() {
    FIELDS.forEach((f) => setFieldError(f, null));
    formError.hidden = true;
    formError.textContent = "";
  }

  function showFormError(message) {
    formError.textContent = message;
    formError.hidden = false;
  }

  function label(field) {
    const el = document.querySelector('label[for="' + field + '"]');
    return el ? el.textContent : field;
  }

  // A new submission once the user changes what they submit.
  FIELDS.forEach((f) =>
    document.getElementById(f).addEventListener("input", () => {
      key = null;
      setFieldError(f, null);
    }),
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (submitting) return;
    if (!form.reportValidity()) return;
    submitting = true;
    button.disabled = true;
    button.textContent = "Enrolling…";
    clearErrors();
    if (!key) key = newKey();
    const body = {
      name: document.getElementById("name").value,
      email: document.getElementById("email").value,
    };
    try {
      const response = await fetch("/api/enrollments", {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json, application/problem+json",
          "Idempotency-Key": key,
        },
        body: JSON.stringify(body),
      });
      const answer = await response.json().catch(() => ({}));
      if (response.ok && answer.view_key) {
        key = null;
        follow(answer.id, answer.view_key);
        return;
      }
      if (response.status === 422 && Array.isArray(answer["invalid-params"])) {
        key = null; // the server refused this body; a corrected one is a new submission
        let general = [];
        answer["invalid-params"].forEach((p) => {
          if (FIELDS.includes(p.name)) setFieldError(p.name, label(p.name) + " " + p.reason + ".");
          else general.push(p.reason);
        });
        if (general.length) showFormError(general.join(" "));
        const first = FIELDS.find((f) => document.getElementById(f).getAttribute("aria-invalid"));
        if (first) document.getElementById(first).focus();
        say("Please correct the highlighted fields.");
      } else if (response.status >= 500 || response.status === 429 || response.status === 408) {
        showFormError(
          (answer.detail || "The service is busy.") + " Press Enroll to try again; you will be enrolled once.",
        );
      } else {
        key = null;
        showFormError(answer.detail || answer.title || "The enrollment was not accepted (" + response.status + ").");
      }
    } catch (_) {
      showFormError("The network failed. Press Enroll to try again; you will be enrolled once.");
    }
    submitting = false;
    button.disabled = false;
    button.textContent = "Enroll";
  });

  again.addEventListener("click", () => {
    if (source) source.close();
    form.reset();
    clearErrors();
    timeline.replaceChildren();
    outcome.hidden = true;
    outcome.className = "outcome";
    confirmation.hidden = true;
    again.hidden = true;
    progress.hidden = true;
    form.hidden = false;
    submitting = false;
    button.disabled = false;
    button.textContent = "Enroll";
    document.getElementById("name").focus();
  });

  function say(text) {
    announce.textContent = text;
  }

  function duration(ms) {
    if (ms < 1000) return ms + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
  }

  // `id` names the enrollment (for support); `viewKey` is its address, the only thing the public
  // routes take.
  function follow(id, viewKey) {
    const address = "/api/enrollments/" + encodeURIComponent(viewKey);
    form.hidden = true;
    progress.hidden = false;
    progress.dataset.id = id;
    say("Enrollment received. Following its progress.");
    let previous = null;
    const seen = new Set();
    let done = false;

    // One timeline entry per history entry, whichever way it arrived.
    function addStep(step) {
      const seenKey = step.status + "|" + step.at;
      if (seen.has(seenKey)) return;
      seen.add(seenKey);
      const at = new Date(step.at);
      const item = document.createElement("li");
      item.dataset.status = step.status;
      const name = document.createElement("span");
      name.className = "step-status";
      name.textContent = statusLabel(step.status);
      const meta = document.createElement("span");
      meta.className = "step-meta";
      const time = document.createElement("time");
      time.dateTime = step.at;
      time.textContent = at.toLocaleTimeString();
      meta.append(time);
      if (previous) meta.append(" · took " + duration(Math.max(0, at - previous)));
      previous = at;
      item.append(name, meta);
      timeline.append(item);
      if (step.status === "awaiting_confirmation") {
        awaitConfirmation(address);
      } else if (step.status !== "pending") {
        confirmation.hidden = true;
      }
      if (isTerminal(step.status) && !done) {
        done = true;
        if (source) source.close();
        finish(address);
      }
    }

    // Without a stream (refused, or a proxy that buffers it), ask the gateway to hold each GET
    // until the saga ends (Prefer: wait), and show the history it returns. Ask again at once only
    // when the gateway did hold the answer (Preference-Applied); when it had no place to hold it,
    // or the request failed, wait first: 2 s, doubling up to 30 s, each with up to half again of
    // random jitter, so that many open pages do not ask in step and hammer a busy gateway.
    async function poll() {
      let pause = 2000;
      while (!done) {
        try {
          const response = await fetch(address, {
            headers: { Accept: "application/json", Prefer: "wait=20" },
          });
          if (response.ok) {
            const view = await response.json();
            (view.history || []).forEach(addStep);
            if (response.headers.has("Preference-Applied")) {
              pause = 2000;
              continue;
            }
          }
        } catch (_) {
          // the network failed; wait and ask again
        }
        if (done) break;
        await new Promise((resolve) => setTimeout(resolve, pause * (1 + Math.random() / 2)));
        pause = Math.min(pause * 2, 30000);
      }
    }

    // The stream ends after MAX_STREAM_SECONDS; EventSource then reconnects by itself with
    // Last-Event-ID and the gateway resumes after the last event it sent.
    source = new EventSource(address + "/events");
    source.addEventListener("status", (message) => addStep(JSON.parse(message.data)));
    // EventSource reconnects by itself (with Last-Event-ID) after a dropped connection; when it
    // gives up (the stream was refused), fall back to held GETs.
    source.addEventListener("error", () => {
      if (!done && source.readyState === EventSource.CLOSED) poll();
    });
  }

  // The saga waits for the owner of the address to follow the mailed link (in this tab or any
  // other): say where the mail went, offer to send it again, and keep following the timeline,
  // which goes on by itself once the link is confirmed.
  async function awaitConfirmation(address) {
    if (!confirmation.hidden) return;
    let view = {};
    try {
      const response = await fetch(address, {
        headers: { Accept: "application/json" },
      });
      view = await response.json();
    } catch (_) {
      view = {};
    }
    if (view.status && view.status !== "awaiting_confirmation") return;
    let text = "We sent a confirmation link to " + (view.mailed_to || "your e-mail address") + ".";
    if (view.confirm_by) text += " Open it before " + new Date(view.confirm_by).toLocaleString() + ".";
    text += " Nothing is enrolled until you do.";
    confirmationText.textContent = text;
    resendNote.hidden = true;
    resendButton.disabled = false;
    resendButton.dataset.address = address;
    confirmation.hidden = false;
    say(text);
  }

  resendButton.addEventListener("click", async () => {
    const address = resendButton.dataset.address;
    resendButton.disabled = true;
    let text;
    try {
      const response = await fetch(address + "/resend", {
        method: "POST",
        headers: { Accept: "application/json" },
      });
      const answer = await response.json().catch(() => ({}));
      if (response.status === 202) {
        text = "Sent again: the new link replaces the previous one.";
        setTimeout(() => (resendButton.disabled = false), (answer.next_resend_after || 60) * 1000);
      } else if (response.status === 429 && response.headers.has("Retry-After")) {
        const seconds = Number(response.headers.get("Retry-After")) || 60;
        text = "A mail was sent less than a minute ago: you can ask again in " + seconds + " s.";
        setTimeout(() => (resendButton.disabled = false), seconds * 1000);
      } else {
        text = answer.detail || "The mail could not be sent again (" + response.status + ").";
      }
    } catch (_) {
      text = "The request failed; check the connection and try again.";
      resendButton.disabled = false;
    }
    resendNote.textContent = text;
    resendNote.hidden = false;
    say(text);
  });

  async function finish(address) {
    let view = {};
    try {
      const response = await fetch(address, {
        headers: { Accept: "application/json" },
      });
      view = await response.json();
    } catch (_) {
      view = {};
    }
    let text;
    if (view.status === "completed") {
      const points = view.bonus_points == null ? 0 : view.bonus_points;
      text = "Completed: you are enrolled with " + points + " bonus points.";
      outcome.className = "outcome ok";
    } else if (view.status === "rejected") {
      text = "Rejected: " + (view.reason || "the enrollment was refused.");
      outcome.className = "outcome failed";
    } else if (view.status === "expired") {
      text = "Expired: " + (view.reason || "the e-mail address was not confirmed in time.") + " Enroll again to get a new link.";
      outcome.className = "outcome failed";
    } else if (view.status === "rolled_back") {
      text = "Rolled back: " + (view.reason || "the enrollment was undone.");
      outcome.className = "outcome failed";
    } else {
      text = "The enrollment ended, but its outcome could not be read. Reload to see it.";
      outcome.className = "outcome failed";
    }
    outcome.dataset.status = view.status || "";
    outcome.textContent = text;
    outcome.hidden = false;
    again.hidden = false;
    say(text);
  }
})();
