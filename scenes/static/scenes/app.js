// Says so when an htmx request gets no usable answer, instead of leaving a click without effect.
(() => {
  const alertBox = () => document.getElementById("page-alert");
  const show = (kind, text) => {
    const box = alertBox();
    if (!box) return;
    box.dataset.kind = kind;
    box.querySelector(".text").textContent = text;
    box.hidden = false;
  };
  const isPoll = (elt) => elt && elt.matches && elt.matches("li.scene[hx-trigger]");

  document.addEventListener("htmx:sendError", () =>
    show("offline", "The server cannot be reached. Check the connection; the page retries on its own."));
  document.addEventListener("htmx:responseError", (event) =>
    show("server", `The server could not do that (HTTP ${event.detail.xhr.status}). Try again in a moment.`));
  document.addEventListener("htmx:afterRequest", (event) => {
    const box = alertBox();
    if (!box || box.hidden || !event.detail.successful) return;
    // A poll that gets through again ends an outage; a server error stays until the person acts again.
    if (box.dataset.kind === "offline" || !isPoll(event.detail.elt)) box.hidden = true;
  });
  document.addEventListener("click", (event) => {
    if (event.target.closest("#page-alert .dismiss")) alertBox().hidden = true;
  });
})();
