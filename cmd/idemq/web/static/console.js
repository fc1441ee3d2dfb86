// idemq console: a little plain JavaScript. Every page works without it;
// with it, job pages update live, "select all" works and confirmation
// buttons wait for the typed stream name.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Select all checkboxes of the table a header checkbox sits in.
  for (const all of document.querySelectorAll("input.select-all")) {
    all.addEventListener("change", () => {
      for (const box of all.closest("table").querySelectorAll("input.pick")) box.checked = all.checked;
    });
  }

  // A purge button stays disabled until its form's confirmation field holds
  // the stream name (the server checks it again).
  for (const field of document.querySelectorAll("input.confirm")) {
    const button = field.form.querySelector("button[type=submit]");
    const update = () => { button.disabled = field.value.trim() !== field.dataset.want; };
    field.addEventListener("input", update);
    update();
  }

  // Live job progress.
  const job = document.getElementById("job");
  if (job && job.dataset.finished !== "true") poll(job.dataset.id);
});

async function poll(id) {
  const $ = (x) => document.getElementById(x);
  for (;;) {
    let st;
    try {
      const res = await fetch("/jobs/" + encodeURIComponent(id) + "/status", { cache: "no-store" });
      if (!res.ok) return;
      st = await res.json();
    } catch (e) {
      await new Promise((r) => setTimeout(r, 2000));
      continue;
    }
    $("job-state").textContent = st.state;
    $("job-state").className = "state state-" + st.state;
    $("job-took").textContent = st.took;
    $("job-summary").textContent = st.summary;
    $("job-progress").max = Math.max(st.selected, 1);
    $("job-progress").value = st.done;
    if (st.error) { $("job-error").textContent = st.error; $("job-error").hidden = false; }
    if (st.log) { $("job-log").textContent = st.log; $("job-log").hidden = false; }
    if (st.finished) {
      $("cancel-form").hidden = true;
      $("job").dataset.finished = "true";
      return;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}
