/* Copies the spoiler-free share text (scores and squares, never captions) to the clipboard. */
"use strict";
(function () {
  const button = document.getElementById("copy-share");
  const text = document.getElementById("share-text");
  const status = document.getElementById("copy-status");
  if (!button || !text) return;
  button.addEventListener("click", function () {
    const value = text.textContent;
    const done = function () { status.textContent = "Copied!"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(value).then(done, fallback);
    } else {
      fallback();
    }
    function fallback() {
      // Older browsers and plain-http hosts: select a hidden textarea and copy.
      const area = document.createElement("textarea");
      area.value = value;
      area.setAttribute("readonly", "");
      area.style.position = "absolute";
      area.style.left = "-9999px";
      document.body.appendChild(area);
      area.select();
      let ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(area);
      status.textContent = ok ? "Copied!" : "Select the text above and copy it.";
    }
  });
})();
