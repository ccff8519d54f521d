// The review page's one script: conveniences only; every page works without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Filters apply as soon as a select changes (text fields still wait for Apply or Enter).
  const filters = document.getElementById("filters");
  if (filters) {
    filters.querySelectorAll("select").forEach((select) => {
      select.addEventListener("change", () => filters.requestSubmit());
    });
    // Empty fields stay out of the URL, so a shared link says only what was chosen.
    filters.addEventListener("submit", () => {
      filters.querySelectorAll("input, select").forEach((field) => {
        if (!field.value) field.disabled = true;
      });
    });
  }
  // Keyboard labelling on a verdict: d = defect, f = false alarm, m = missed defect (not while typing a note).
  const form = document.getElementById("label-form");
  if (form) {
    const keys = { d: "defect", f: "false_alarm", m: "missed_defect" };
    document.addEventListener("keydown", (event) => {
      if (event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey || event.altKey) return;
      const button = document.getElementById("label-" + keys[event.key]);
      if (button) button.click();
    });
  }
});
