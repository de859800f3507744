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

// Live updates through one Server-Sent Events stream (GET /api/v1/scenes/events, the session's cookie).
// While it is up, window.msLive is true and rows do not poll (their hx-trigger filter reads it): a progress
// event moves a row's bar in place, any other change fetches that one row once. While it is down, rows poll
// as before; the browser reconnects by itself after the server ended a stream, and when the stream is
// refused (Redis down, a WSGI server) the page tries again later, a little later each time.
(() => {
  const list = document.getElementById("scene-rows");
  if (!list || !list.dataset.events || !window.EventSource || !window.htmx) return;
  const RETRY_MS = [2000, 5000, 15000, 60000];
  let lastId = list.dataset.eventsFrom || "";
  let failures = 0;
  const fetching = new Map(); // scene id → whether another change came while its row was being fetched

  window.msLive = false;
  const live = (on) => {
    window.msLive = on;
    list.dataset.live = on ? "on" : "off";
  };

  const refresh = (id) => {
    const row = document.getElementById(`scene-${id}`);
    if (!row) return; // not on this page
    if (fetching.has(id)) {
      fetching.set(id, true);
      return;
    }
    fetching.set(id, false);
    // reason=event: a fetch caused by an event, once, not a poll
    htmx.ajax("GET", `${row.dataset.rowUrl}?reason=event`, {target: row, swap: "outerHTML"}).finally(() => {
      const again = fetching.get(id);
      fetching.delete(id);
      if (again) refresh(id);
    });
  };

  const onScene = (data) => {
    if (data.transition === "delete") {
      document.getElementById(`scene-${data.scene.id}`)?.remove();
      return;
    }
    refresh(data.scene.id);
  };

  const onProgress = ({scene}) => {
    const row = document.getElementById(`scene-${scene.id}`);
    if (!row) return;
    const bar = row.querySelector(".progress progress");
    const percent = row.querySelector(".progress .percent");
    // A row that shows another status or stage is fetched: its label and layout change too.
    if (!bar || !percent || row.dataset.status !== scene.status || row.dataset.stage !== scene.stage) {
      refresh(scene.id);
      return;
    }
    const value = scene.progress ?? 0;
    bar.value = value;
    bar.textContent = `${value}%`;
    percent.textContent = `${value}%`;
  };

  const connect = () => {
    const url = list.dataset.events + (lastId ? `?last_event_id=${encodeURIComponent(lastId)}` : "");
    const source = new EventSource(url);
    const on = (type, handler) => source.addEventListener(type, (event) => {
      if (event.lastEventId) lastId = event.lastEventId;
      handler(event.data ? JSON.parse(event.data) : {});
    });
    on("ready", () => {
      failures = 0;
      live(true);
    });
    on("scene", onScene);
    on("progress", onProgress);
    // Events were trimmed before this page got them: fetch every row that is not finished.
    on("reset", () => list.querySelectorAll("li.scene[hx-trigger]").forEach((li) => refresh(li.dataset.sceneId)));
    // The server ends the stream (too slow, stopping, Redis lost): poll until the browser has reconnected.
    ["lagged", "shutdown", "unavailable"].forEach((type) => on(type, () => live(false)));
    source.onerror = () => {
      live(false);
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(connect, RETRY_MS[Math.min(failures++, RETRY_MS.length - 1)]);
      }
    };
  };
  connect();
})();
