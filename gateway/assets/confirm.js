// The confirmation page: the token is in the link's fragment, which the browser never sends to a
// server. It is read once and removed from the address bar (and so from the history and from
// anything that copies the URL); pressing the button POSTs it. Opening the page confirms nothing.
"use strict";

(function () {
  const token = window.location.hash.replace(/^#/, "");
  if (window.location.hash) {
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  const button = document.getElementById("confirm");
  const outcome = document.getElementById("outcome");
  const missing = document.getElementById("missing");
  const next = document.getElementById("next");

  if (!token) {
    missing.hidden = false;
    return;
  }
  button.hidden = false;

  function show(text, ok) {
    outcome.textContent = text;
    outcome.className = "outcome " + (ok ? "ok" : "failed");
    outcome.hidden = false;
  }

  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "Confirming…";
    let response;
    let answer = {};
    try {
      response = await fetch("/api/confirmations", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ token: token }),
      });
      answer = await response.json().catch(() => ({}));
    } catch (_) {
      button.disabled = false;
      button.textContent = "Confirm my enrollment";
      show("The confirmation could not be sent. Check the connection and press the button again.", false);
      return;
    }
    if (response.ok) {
      button.hidden = true;
      show("Confirmed: your enrollment goes on. You can close this page; the page you enrolled on shows the rest.", true);
      next.hidden = false;
    } else if (response.status === 410) {
      button.hidden = true;
      show("This link has expired: the enrollment was not confirmed in time. Enroll again to get a new link.", false);
      next.hidden = false;
    } else if (response.status === 404) {
      button.hidden = true;
      show("This link is not valid, or it was already used (a newer mail replaces an older one).", false);
      next.hidden = false;
    } else {
      button.disabled = false;
      button.textContent = "Confirm my enrollment";
      show(answer.detail || "The confirmation did not go through (" + response.status + "). Press the button again.", false);
    }
  });
})();
