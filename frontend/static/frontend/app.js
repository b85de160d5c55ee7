// Small enhancements shared by every page: copy buttons and tabbed code snippets.
// Works without it: the text is still there to select by hand.
(function () {
  "use strict";

  function copyText(text, button) {
    const done = () => {
      const before = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = before; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => fallback(text, done));
    } else {
      fallback(text, done);
    }
  }

  // Plain-HTTP pages (the embedded mode) have no clipboard API: select and copy instead.
  function fallback(text, done) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); done(); } catch (e) { /* the text stays selectable */ }
    area.remove();
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const target = document.getElementById(button.dataset.copy);
    if (target) copyText(target.textContent.trim(), button);
  });

  // Snippet tabs: buttons [role=tab] inside [data-tabs] show the matching [role=tabpanel].
  document.querySelectorAll("[data-tabs]").forEach((group) => {
    const tabs = Array.from(group.querySelectorAll("[role=tab]"));
    const select = (tab) => {
      tabs.forEach((t) => {
        const on = t === tab;
        t.setAttribute("aria-selected", on ? "true" : "false");
        t.tabIndex = on ? 0 : -1;
        const panel = document.getElementById(t.getAttribute("aria-controls"));
        if (panel) panel.hidden = !on;
      });
    };
    tabs.forEach((tab, i) => {
      tab.addEventListener("click", () => select(tab));
      tab.addEventListener("keydown", (e) => {
        const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
        if (!step) return;
        const next = tabs[(i + step + tabs.length) % tabs.length];
        select(next);
        next.focus();
      });
    });
    if (tabs.length) select(tabs[0]);
  });

  // The organization switcher goes to the chosen organization's dashboard as soon as it
  // changes (here, not in on* attributes: the Content-Security-Policy allows no inline script).
  document.querySelectorAll("form[data-org-switch]").forEach((form) => {
    const go = () => { location.href = "/dashboard/" + encodeURIComponent(form.org.value) + "/"; };
    form.addEventListener("submit", (event) => { event.preventDefault(); go(); });
    form.org.addEventListener("change", go);
  });
})();
