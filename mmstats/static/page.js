// The mmstats live page: polls api/json next to the page and draws it.
// Every string from the stats files reaches the document through
// textContent or a property such as title, never as markup.
"use strict";
(function () {
  var params = new URLSearchParams(window.location.search);
  var INTERVAL_MS = clamp(Number(params.get("interval")) || 2, 1, 60) * 1000;
  var GAP_SECONDS = 3 * INTERVAL_MS / 1000;
  var SLOW_AFTER = Number(params.get("slow_after")) > 0 ? Number(params.get("slow_after")) : 1;
  var HISTORY_S = 300;
  var SLOW_ROWS = 200;
  // Slow entries asked of each worker: enough to fill the table, fewer
  // when there are many workers, since each entry costs the server a bit.
  var SLOW_WANTED = 400;
  var METRICS = [
    "requests", "responses", "in_flight", "request_seconds", "db_queries",
    "memory_rss_bytes",
  ];
  var CLASSES = ["1xx", "2xx", "3xx", "4xx", "5xx"];
  var CLASS_COLORS = {
    "1xx": "#8a8f98", "2xx": "#2e9d57", "3xx": "#2f6fd6", "4xx": "#e09b00",
    "5xx": "#d0342c",
  };
  var PALETTE = [
    "#2f6fd6", "#2e9d57", "#d0342c", "#8e5bd0", "#e09b00", "#1b9aaa",
    "#c2528b", "#6b8e23", "#a0522d", "#546e7a",
  ];
  var LIVE = { alive: true, unknown: true };

  // A page at /stats (no trailing slash) still reads /stats/api/json.
  var here = window.location.pathname;
  var BASE = here.endsWith("/") ? "" : here.slice(here.lastIndexOf("/") + 1) + "/";
  var API = BASE + "api/json?metrics=" + METRICS.join(",");
  var slowPerWorker = 100; // asked in the next poll
  var slowAsked = 100; // asked for the document shown

  var samples = []; // one per poll: {t, rps, p50, p90, p99, qmean, q90, inflight, rss}
  var previous = null; // the counters of the last poll, for rates
  var lastDoc = null;
  var lastOk = 0;
  var timer = 0;
  var slowSort = { key: "end", desc: true };

  // -- small helpers --------------------------------------------------------

  function clamp(x, lo, hi) { return Math.min(hi, Math.max(lo, x)); }

  function $(id) { return document.getElementById(id); }

  // Build an element; children that are strings become text nodes.
  function h(tag, props) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (key) {
        var value = props[key];
        if (value === undefined || value === null) return;
        if (key === "className") node.className = value;
        else if (key === "title") node.title = String(value);
        else if (key.indexOf("data-") === 0) node.setAttribute(key, String(value));
        else node[key] = value;
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(id, text) { $(id).textContent = text; }

  // Strings from a file are shown with what the command line escapes
  // (clean_text in _render.py) escaped: control characters, zero-width and
  // bidirectional controls, line and paragraph separators, the byte-order
  // mark and lone surrogates (a byte that was not UTF-8 comes as
  // U+DC80..U+DCFF and is shown as that byte).
  var UNSAFE = new RegExp(
    "[\\u0000-\\u001f\\u007f-\\u009f\\u00ad\\u034f\\u061c\\u115f\\u1160\\u17b4\\u17b5\\u180b-\\u180f" +
    "\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\u3164\\ufeff\\uffa0\\ufff9-\\ufffb" +
    "\\ud800-\\udfff\\u{1d173}-\\u{1d17a}\\u{e0000}-\\u{e0fff}]", "gu");
  var NAMED = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

  function visible(text) {
    return String(text).replace(UNSAFE, function (c) {
      if (NAMED[c]) return NAMED[c];
      var code = c.codePointAt(0);
      if (code >= 0xdc80 && code <= 0xdcff) code -= 0xdc00;
      var hex = code.toString(16);
      if (code < 0x100) return "\\x" + ("0" + hex).slice(-2);
      if (code < 0x10000) return "\\u" + ("000" + hex).slice(-4);
      return "\\U" + ("0000000" + hex).slice(-8);
    });
  }

  // A string from a file, shortened for a table cell (the title has it all).
  function short(text, limit) {
    var clean = visible(text);
    return clean.length > limit ? clean.slice(0, limit) + "\u2026" : clean;
  }

  function fmtInt(n) {
    return n === null || n === undefined ? "\u2013" : Math.round(n).toLocaleString("en-US");
  }

  function fmtNumber(x, digits) {
    if (x === null || x === undefined || !isFinite(x)) return "\u2013";
    if (x === 0) return "0";
    var abs = Math.abs(x);
    if (abs >= 100 || Number.isInteger(x)) return Math.round(x).toLocaleString("en-US");
    return x.toFixed(abs >= 10 ? 1 : digits === undefined ? 2 : digits);
  }

  function fmtRate(x) { return x === null || x === undefined ? "\u2013" : fmtNumber(x) + "/s"; }

  function fmtDuration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "\u2013";
    var abs = Math.abs(s);
    if (abs === 0) return "0 s";
    if (abs < 0.001) return (s * 1e6).toFixed(0) + " \u00b5s";
    if (abs < 1) return trimZeros((s * 1000).toPrecision(3)) + " ms";
    if (abs < 60) return trimZeros(s.toFixed(abs < 10 ? 2 : 1)) + " s";
    var m = Math.floor(abs / 60);
    if (m < 60) return m + "m " + String(Math.floor(abs % 60)).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  }

  function trimZeros(text) {
    return text.indexOf(".") < 0 ? text : text.replace(/0+$/, "").replace(/\.$/, "");
  }

  function fmtBytes(b, signed) {
    if (b === null || b === undefined || !isFinite(b)) return "\u2013";
    var sign = b < 0 ? "\u2212" : signed && b > 0 ? "+" : "";
    var abs = Math.abs(b);
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (abs >= 1024 && i < units.length - 1) { abs /= 1024; i++; }
    return sign + (i === 0 ? abs.toFixed(0) : abs.toFixed(abs >= 100 ? 0 : 1)) + " " + units[i];
  }

  function fmtSigned(x) {
    if (x === null || x === undefined || !isFinite(x)) return "\u2013";
    return (x > 0 ? "+" : x < 0 ? "\u2212" : "") + Math.abs(x).toFixed(2);
  }

  function pad2(n) { return String(n).padStart(2, "0"); }

  function fmtClock(t) {
    if (!t) return "\u2013";
    var d = new Date(t * 1000);
    return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
  }

  function fmtWhen(t) {
    if (!t) return "\u2013";
    var d = new Date(t * 1000);
    return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) +
      " " + fmtClock(t);
  }

  function fmtAgo(seconds) {
    if (seconds === null || !isFinite(seconds)) return "";
    return fmtDuration(Math.max(0, seconds)) + " ago";
  }

  // -- histograms (the schema's buckets, as HistogramValue in _reader.py) --

  function bounds(hist, k) {
    if (k === 0) return [-Infinity, hist.lo];
    return [hist.lo * Math.pow(hist.gamma, k - 1), hist.lo * Math.pow(hist.gamma, k)];
  }

  // The value standing for bucket k: the harmonic mean of its bounds.
  function representative(hist, k) {
    if (k === 0) return 0;
    var b = bounds(hist, k);
    var value = (2 * b[0] * b[1]) / (b[0] + b[1]);
    if (hist.integer) {
      var first = Math.floor(b[0]) + 1;
      var last = Math.floor(b[1]);
      if (first <= last) return Math.min(Math.max(Math.round(value), first), last);
    }
    return value;
  }

  // The q quantile by nearest rank, or null for an empty histogram.
  function quantile(hist, q) {
    var keys = Object.keys(hist.buckets).map(Number).sort(function (a, b) { return a - b; });
    var total = 0;
    keys.forEach(function (k) { total += hist.buckets[k]; });
    if (total <= 0) return null;
    var rank = Math.max(1, Math.ceil(q * total));
    var seen = 0;
    for (var i = 0; i < keys.length; i++) {
      seen += hist.buckets[keys[i]];
      if (seen >= rank) return representative(hist, keys[i]);
    }
    return representative(hist, keys[keys.length - 1]);
  }

  // What was observed between two readings, or null if a worker went away
  // without its counts reaching the archive (then no interval is known).
  function histDelta(now, before) {
    if (!now) return null;
    if (!before) return now;
    if (now.lo !== before.lo || now.gamma !== before.gamma) return null;
    var buckets = {};
    var keys = Object.keys(now.buckets);
    for (var i = 0; i < keys.length; i++) {
      var d = now.buckets[keys[i]] - (before.buckets[keys[i]] || 0);
      if (d < 0) return null;
      if (d > 0) buckets[keys[i]] = d;
    }
    var gone = Object.keys(before.buckets).some(function (k) { return !(k in now.buckets); });
    if (gone) return null;
    return {
      lo: now.lo, gamma: now.gamma, integer: now.integer, buckets: buckets,
      count: now.count - before.count, sum: now.sum - before.sum,
    };
  }

  // -- reading a document ---------------------------------------------------

  function metric(list, name, labels) {
    for (var i = 0; i < (list || []).length; i++) {
      var m = list[i];
      if (m.name !== name) continue;
      if (!labels) return m;
      var ok = Object.keys(labels).every(function (k) { return m.labels[k] === labels[k]; });
      if (ok) return m;
    }
    return null;
  }

  function value(list, name, labels) {
    var m = metric(list, name, labels);
    return m ? m.value : null;
  }

  function gaugeSum(v) {
    if (v === null || v === undefined) return 0;
    return typeof v === "object" ? v.sum || 0 : v;
  }

  function isHistogram(v) { return v && typeof v === "object" && v.buckets; }

  function counters(doc) {
    var totals = doc.totals || [];
    var responses = {};
    CLASSES.forEach(function (cls) {
      responses[cls] = value(totals, "responses", { class: cls }) || 0;
    });
    var req = value(totals, "request_seconds");
    var db = value(totals, "db_queries");
    return {
      t: doc.read_at,
      requests: value(totals, "requests") || 0,
      responses: responses,
      request_seconds: isHistogram(req) ? req : null,
      db_queries: isHistogram(db) ? db : null,
    };
  }

  function record(doc) {
    var now = counters(doc);
    var live = (doc.workers || []).filter(function (w) { return LIVE[w.state]; });
    var sample = {
      t: now.t, rps: null, p50: null, p90: null, p99: null, qmean: null, q90: null,
      inflight: gaugeSum(value(doc.totals, "in_flight")), rss: {},
    };
    live.forEach(function (w) {
      var rss = value(w.metrics, "memory_rss_bytes");
      if (typeof rss === "number") sample.rss[w.pid] = rss;
    });
    if (previous && now.t > previous.t) {
      var dt = now.t - previous.t;
      var rps = {};
      CLASSES.forEach(function (cls) {
        rps[cls] = Math.max(0, now.responses[cls] - previous.responses[cls]) / dt;
      });
      sample.rps = rps;
      sample.total = Math.max(0, now.requests - previous.requests) / dt;
      var req = histDelta(now.request_seconds, previous.request_seconds);
      if (req && req.count > 0) {
        sample.p50 = quantile(req, 0.5);
        sample.p90 = quantile(req, 0.9);
        sample.p99 = quantile(req, 0.99);
      }
      var db = histDelta(now.db_queries, previous.db_queries);
      if (db && db.count > 0) {
        sample.qmean = db.sum / db.count;
        sample.q90 = quantile(db, 0.9);
      }
    }
    if (!previous || now.t > previous.t) {
      samples.push(sample);
      previous = now;
    }
    while (samples.length && samples[0].t < now.t - HISTORY_S) samples.shift();
  }

  // -- polling --------------------------------------------------------------

  function schedule(ms) {
    window.clearTimeout(timer);
    timer = window.setTimeout(poll, ms);
  }

  function poll() {
    // A hidden tab waits until it is shown again: no load for nobody.
    if (document.hidden) { setStatus("paused while the tab is hidden", ""); return; }
    var asked = slowPerWorker;
    var url = API + "&slow=" + asked;
    fetch(url, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (doc) {
        lastOk = Date.now();
        lastDoc = doc;
        slowAsked = asked;
        var files = (doc.workers || []).length + 1;
        slowPerWorker = clamp(Math.ceil(SLOW_WANTED / files), 10, 100);
        if (!doc.error) record(doc);
        render(doc);
        if (doc.error) setStatus("the stats directory cannot be read; retrying", "stale");
        else setStatus("live \u00b7 read at " + fmtClock(doc.read_at) +
          " \u00b7 every " + INTERVAL_MS / 1000 + " s", "live");
      })
      .catch(function (err) {
        var since = lastOk ? "; last reading " + fmtAgo((Date.now() - lastOk) / 1000) : "";
        setStatus("cannot read " + API.split("?")[0] + ": " + err.message + since, "stale");
      })
      .then(function () { schedule(INTERVAL_MS); });
  }

  function setStatus(text, cls) {
    var node = $("status");
    node.textContent = text;
    node.className = "status" + (cls ? " " + cls : "");
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) schedule(0);
  });

  // -- rendering ------------------------------------------------------------

  function render(doc) {
    renderProblems(doc);
    if (doc.error) return;
    var workers = (doc.workers || []).slice().sort(function (a, b) { return a.pid - b.pid; });
    var live = workers.filter(function (w) { return LIVE[w.state]; });
    var dead = workers.filter(function (w) { return w.state === "dead"; });
    var gone = workers.filter(function (w) { return !LIVE[w.state]; });

    var hosts = [];
    live.forEach(function (w) {
      var host = short(w.hostname, 64);
      if (hosts.indexOf(host) < 0) hosts.push(host);
    });
    setText("host", hosts.join(", "));
    document.title = "mmstats" + (hosts.length ? " \u00b7 " + hosts.join(", ") : "");
    setText("directory", "Directory " + visible(doc.directory || ""));

    renderTiles(doc, live, workers);
    renderGrid(doc, live, dead);
    renderCharts();
    renderSlow(doc, workers);
    renderGone(doc, gone);
    renderBad(doc);
  }

  function renderProblems(doc) {
    var lines = [];
    if (doc.error) lines.push(visible(doc.error));
    (doc.problems || []).forEach(function (p) { lines.push(visible(p)); });
    var box = $("problems");
    box.replaceChildren.apply(box, lines.map(function (line) { return h("p", null, line); }));
    box.hidden = lines.length === 0;
  }

  function latest() { return samples.length ? samples[samples.length - 1] : null; }

  function renderTiles(doc, live, workers) {
    var count = { dead: 0, closed: 0 };
    workers.forEach(function (w) { if (w.state in count) count[w.state]++; });
    setText("tile-workers", fmtInt(live.length) + " alive");
    var sub = [];
    if (count.dead) sub.push(count.dead + " dead");
    if (count.closed) sub.push(count.closed + " closed");
    if ((doc.bad_files || []).length) sub.push(doc.bad_files.length + " unreadable");
    if (doc.archive && doc.archive.workers) sub.push(doc.archive.workers + " archived");
    setText("tile-workers-sub", sub.join(" \u00b7 ") || "none gone");

    setText("total-requests", fmtInt(value(doc.totals, "requests") || 0));
    setText("tile-requests-sub", "every worker and the archive");

    var s = latest();
    setText("tile-rate", s && s.rps ? fmtNumber(s.total) : "\u2013");
    setText("tile-rate-sub", s && s.rps
      ? "errors (5xx) " + fmtRate(s.rps["5xx"]) + " \u00b7 4xx " + fmtRate(s.rps["4xx"])
      : "after the second reading");
    setText("tile-latency", s && s.p50 !== null ? fmtDuration(s.p50) : "\u2013");
    setText("tile-latency-sub", s && s.p99 !== null
      ? "p50 \u00b7 p90 " + fmtDuration(s.p90) + " \u00b7 p99 " + fmtDuration(s.p99)
      : "p50; no request in the last interval");

    var slots = 0;
    var slow = 0;
    live.forEach(function (w) {
      (w.slots || []).forEach(function (slot) {
        slots++;
        if (doc.read_at - slot.started >= SLOW_AFTER) slow++;
      });
    });
    setText("tile-inflight", fmtInt(slots));
    setText("tile-inflight-sub", slow + " for " + fmtDuration(SLOW_AFTER) + " or more");

    var rss = 0;
    var largest = 0;
    live.forEach(function (w) {
      var v = value(w.metrics, "memory_rss_bytes");
      if (typeof v === "number") { rss += v; largest = Math.max(largest, v); }
    });
    setText("tile-memory", rss ? fmtBytes(rss) : "\u2013");
    setText("tile-memory-sub", largest ? "largest worker " + fmtBytes(largest) : "resident, live workers");
  }

  function workerTitle(w) {
    var lines = [
      "pid " + w.pid + " (" + w.state + ")" + (w.name ? ", " + visible(w.name) : ""),
      "host " + visible(w.hostname),
      "requests " + fmtInt(value(w.metrics, "requests") || 0),
      "memory " + fmtBytes(value(w.metrics, "memory_rss_bytes")),
      "started " + fmtWhen(w.start_time),
      "command " + visible(w.command),
      "file " + visible(w.file),
    ];
    if (w.problem) lines.push("problem " + visible(w.problem));
    return lines.join("\n");
  }

  function cell(state, w, head, age, req, meta, title) {
    var classes = "cell " + state + (w.state === "unknown" ? " other-host" : "");
    return h("div", { className: classes, title: title, "data-pid": w.pid, "data-state": state },
      h("div", { className: "cell-head" }, h("span", { className: "pid" }, head),
        h("span", { className: "age" }, age)),
      h("div", { className: "cell-req" }, req),
      h("div", { className: "cell-meta" }, meta));
  }

  function workerCells(doc, w) {
    var dead = w.state === "dead";
    var requests = fmtInt(value(w.metrics, "requests") || 0) + " req";
    var rss = value(w.metrics, "memory_rss_bytes");
    var info = requests + (typeof rss === "number" && !dead ? " \u00b7 " + fmtBytes(rss) : "");
    var title = workerTitle(w);
    var head = "pid " + w.pid;
    var slots = w.slots || [];
    if (!slots.length) {
      if (dead) {
        return [cell("dead", w, head, "dead", "no request in flight",
          "last request " + (w.heartbeat ? fmtClock(w.heartbeat) : "never"), title)];
      }
      // Short enough for the narrowest card; the title has the time.
      var last = w.heartbeat ? "idle for " + fmtDuration(Math.max(0, doc.read_at - w.heartbeat)) : "idle, no request yet";
      return [cell("idle", w, head, "idle", last, info, title)];
    }
    return slots.map(function (slot) {
      var end = dead ? w.heartbeat || slot.started : doc.read_at;
      var elapsed = Math.max(0, end - slot.started);
      var state = dead ? "dead" : elapsed >= SLOW_AFTER ? "slow" : "serving";
      var queries = slot.queries + (slot.queries === 1 ? " query" : " queries");
      var meta = (slot.view ? short(slot.view, 80) + " \u00b7 " : "") + queries;
      var detail = [
        visible(slot.method) + " " + visible(slot.path),
        "view " + (slot.view ? visible(slot.view) : "(not known yet)"),
        "started " + fmtWhen(slot.started) + (dead ? "" : ", " + fmtDuration(elapsed) + " ago"),
        queries + ", " + fmtDuration(slot.db_seconds) + " in the database",
        "thread " + slot.thread, "", title,
      ].join("\n");
      var age = dead ? "dead" : fmtDuration(elapsed);
      return cell(state, w, head + (slots.length > 1 ? " #" + slot.index : ""), age,
        short(slot.method, 16) + " " + short(slot.path, 120), meta, detail);
    });
  }

  function renderGrid(doc, live, dead) {
    var cells = [];
    live.concat(dead).forEach(function (w) { cells = cells.concat(workerCells(doc, w)); });
    var grid = $("grid");
    if (!cells.length) cells = [h("p", { className: "empty" }, "No live worker has written a stats file yet.")];
    grid.replaceChildren.apply(grid, cells);
    grid.classList.toggle("compact", cells.length > 24);
    var busy = 0;
    live.forEach(function (w) { if ((w.slots || []).length) busy++; });
    setText("grid-count", live.length + " live, " + busy + " busy" +
      (dead.length ? ", " + dead.length + " dead" : ""));
  }

  // -- slow requests --------------------------------------------------------

  var SLOW_COLUMNS = [
    { key: "end", label: "Ended", fmt: fmtClock, num: true, title: fmtWhen },
    { key: "duration_seconds", label: "Duration", fmt: fmtDuration, num: true },
    { key: "status", label: "Status", num: true },
    { key: "method", label: "Method" },
    { key: "path", label: "Path", cls: "path" },
    { key: "view", label: "View", cls: "wrap" },
    { key: "queries", label: "Queries", num: true, fmt: fmtInt },
    { key: "db_seconds", label: "DB time", fmt: fmtDuration, num: true },
    { key: "memory_delta_bytes", label: "Memory \u0394", num: true,
      fmt: function (b) { return fmtBytes(b, true); } },
    { key: "load_delta", label: "Load \u0394", fmt: fmtSigned, num: true },
    { key: "pid", label: "PID", num: true },
    { key: "hostname", label: "Host" },
    { key: "start", label: "Started", fmt: fmtClock, num: true, title: fmtWhen },
  ];

  function buildSlowHead() {
    var row = document.querySelector("#slow thead tr");
    row.replaceChildren.apply(row, SLOW_COLUMNS.map(function (col) {
      var button = h("button", { type: "button", "data-key": col.key }, col.label);
      button.addEventListener("click", function () {
        if (slowSort.key === col.key) slowSort.desc = !slowSort.desc;
        else slowSort = { key: col.key, desc: col.num === true };
        slowSignature = "";
        if (lastDoc && !lastDoc.error) renderSlow(lastDoc, lastDoc.workers || []);
      });
      return h("th", { className: col.num ? "num" : "", "data-key": col.key }, button);
    }));
  }

  var slowSignature = "";

  function renderSlow(doc, workers) {
    var entries = [];
    workers.forEach(function (w) { entries = entries.concat(w.slow || []); });
    entries = entries.concat((doc.archive && doc.archive.slow) || []);
    var key = slowSort.key;
    var sign = slowSort.desc ? -1 : 1;
    entries.sort(function (a, b) {
      var x = a[key];
      var y = b[key];
      if (x === y) return b.end - a.end;
      if (typeof x === "string" || typeof y === "string") {
        return sign * String(x).localeCompare(String(y));
      }
      return sign * ((x === null ? -Infinity : x) - (y === null ? -Infinity : y));
    });
    var shown = entries.slice(0, SLOW_ROWS);

    document.querySelectorAll("#slow thead th").forEach(function (th) {
      if (th.getAttribute("data-key") === key) {
        th.setAttribute("aria-sort", slowSort.desc ? "descending" : "ascending");
        th.querySelector("button").textContent =
          SLOW_COLUMNS.find(function (c) { return c.key === key; }).label + (slowSort.desc ? " \u25bc" : " \u25b2");
      } else {
        th.removeAttribute("aria-sort");
        th.querySelector("button").textContent =
          SLOW_COLUMNS.find(function (c) { return c.key === th.getAttribute("data-key"); }).label;
      }
    });

    var cut = workers.some(function (w) { return (w.slow || []).length >= slowAsked; });
    var count = entries.length > SLOW_ROWS ? shown.length + " of " + entries.length + " shown" : String(entries.length);
    setText("slow-count", count + (cut ? " \u00b7 the newest " + slowAsked + " of each worker" : ""));
    $("slow-empty").hidden = entries.length > 0;

    // Rebuild the rows only when they change, so a selection survives.
    var signature = key + slowSort.desc + shown.map(function (e) {
      return e.pid + ":" + e.end + ":" + e.duration_seconds;
    }).join(",");
    if (signature === slowSignature) return;
    slowSignature = signature;
    var body = document.querySelector("#slow tbody");
    body.replaceChildren.apply(body, shown.map(function (e) {
      return h.apply(null, ["tr", null].concat(SLOW_COLUMNS.map(function (col) {
        var v = e[col.key];
        var cls = (col.num ? "num" : "") + (col.cls ? " " + col.cls : "");
        if (col.key === "status" && v >= 400) cls += " status-" + Math.floor(v / 100) + "xx";
        var title = col.title ? col.title(v) : null;
        var text;
        if (col.fmt) text = col.fmt(v);
        else if (v === null || v === undefined) text = "\u2013";
        else if (typeof v === "string") {
          text = short(v, 160);
          if (text !== v) title = visible(v);
        } else text = String(v);
        return h("td", { className: cls.trim(), title: title }, text);
      })));
    }));
  }

  // -- gone workers and unreadable files -------------------------------------

  function reason(w) {
    var text;
    if (w.state === "dead") {
      text = "Process gone without closing its stats file: killed or crashed";
      if (w.heartbeat) text += "; last request ended " + fmtWhen(w.heartbeat);
    } else {
      text = "Exited cleanly" + (w.closed_at ? " at " + fmtWhen(w.closed_at) : "");
    }
    if (w.problem) text += ". " + visible(w.problem);
    return text;
  }

  function renderGone(doc, gone) {
    $("gone-panel").hidden = gone.length === 0;
    setText("gone-count", gone.length ? String(gone.length) : "");
    gone = gone.slice().sort(function (a, b) {
      return (a.state === "dead" ? 0 : 1) - (b.state === "dead" ? 0 : 1) || a.pid - b.pid;
    });
    var body = document.querySelector("#gone tbody");
    body.replaceChildren.apply(body, gone.map(function (w) {
      var serving = (w.slots || []).map(function (s) {
        return short(s.method, 16) + " " + short(s.path, 160);
      }).join("\n");
      return h("tr", { title: workerTitle(w) },
        h("td", { className: "num" }, String(w.pid)),
        h("td", null, short(w.name, 60)),
        h("td", { className: w.state === "dead" ? "state-dead" : "" }, w.state),
        h("td", { className: "wrap" }, reason(w)),
        h("td", { className: "path" }, serving || "\u2013"),
        h("td", { className: "num" }, fmtInt(value(w.metrics, "requests") || 0)),
        h("td", null, fmtWhen(w.heartbeat)),
        h("td", { className: "path" }, visible(w.file)));
    }));
  }

  function renderBad(doc) {
    var bad = doc.bad_files || [];
    $("bad-panel").hidden = bad.length === 0;
    setText("bad-count", bad.length ? String(bad.length) : "");
    var body = document.querySelector("#bad tbody");
    body.replaceChildren.apply(body, bad.map(function (b) {
      return h("tr", null, h("td", { className: "path" }, visible(b.path)),
        h("td", { className: "wrap" }, visible(b.reason)));
    }));
  }

  // -- charts -----------------------------------------------------------------

  var hover = null; // the time under the mouse, or null

  var CHARTS = [
    {
      id: "chart-rps", fmt: fmtNumber, unit: "/s",
      lines: function () {
        var seen = CLASSES.filter(function (cls) {
          return cls === "2xx" || samples.some(function (s) { return s.rps && s.rps[cls] > 0; });
        });
        return seen.map(function (cls) {
          return { label: cls, color: CLASS_COLORS[cls], get: function (s) { return s.rps ? s.rps[cls] : null; } };
        });
      },
    },
    {
      id: "chart-latency", fmt: fmtDuration, log: true,
      lines: function () {
        return [
          { label: "p50", color: "#2f6fd6", get: function (s) { return s.p50; } },
          { label: "p90", color: "#8e5bd0", get: function (s) { return s.p90; } },
          { label: "p99", color: "#d0342c", get: function (s) { return s.p99; } },
        ];
      },
    },
    {
      id: "chart-queries", fmt: fmtNumber,
      lines: function () {
        return [
          { label: "mean", color: "#2e9d57", get: function (s) { return s.qmean; } },
          { label: "p90", color: "#e09b00", get: function (s) { return s.q90; } },
        ];
      },
    },
    {
      id: "chart-inflight", fmt: fmtNumber, integer: true,
      lines: function () {
        return [{ label: "in flight", color: "#2f6fd6", get: function (s) { return s.inflight; } }];
      },
    },
    {
      id: "chart-rss", fmt: fmtBytes, bytes: true, maxLegend: 12,
      lines: function () {
        var pids = [];
        samples.forEach(function (s) {
          Object.keys(s.rss).forEach(function (pid) { if (pids.indexOf(pid) < 0) pids.push(pid); });
        });
        pids.sort(function (a, b) { return a - b; });
        return pids.map(function (pid, i) {
          return {
            label: "pid " + pid, color: PALETTE[i % PALETTE.length],
            get: function (s) { return pid in s.rss ? s.rss[pid] : null; },
          };
        });
      },
    },
  ];

  // A round number at or above x: 1, 2, 2.5 or 5 times a power of ten (or
  // of 1024 for bytes).
  function niceCeil(x, bytes) {
    if (!(x > 0)) return 1;
    var base = bytes && x >= 1024 ? 1024 : 10;
    var power = Math.pow(base, Math.floor(Math.log(x) / Math.log(base)));
    var steps = base === 1024 ? [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024] : [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * power >= x * 0.999999) return steps[i] * power;
    }
    return steps[steps.length - 1] * power;
  }

  // The span the charts show: a minute at first, growing with the history
  // to HISTORY_S, in whole minutes.
  function span() {
    if (samples.length < 2) return 60;
    var have = samples[samples.length - 1].t - samples[0].t;
    return clamp(Math.ceil(have / 60) * 60, 60, HISTORY_S);
  }

  function linearScale(max, chart) {
    var top = niceCeil(max || (chart.integer ? 4 : 1), chart.bytes);
    if (chart.integer && top < 4) top = 4;
    return {
      at: function (v) { return v / top; },
      ticks: [0, top / 4, top / 2, (3 * top) / 4, top],
    };
  }

  // Decades from below the smallest to above the largest positive value.
  function logScale(min, max) {
    var lo = Math.pow(10, Math.floor(Math.log10(Math.max(min, 1e-6))));
    var hi = Math.pow(10, Math.ceil(Math.log10(Math.max(max, lo * 10))));
    if (hi <= lo) hi = lo * 10;
    var decades = Math.round(Math.log10(hi / lo));
    var step = decades > 4 ? 2 : 1;
    var ticks = [];
    for (var i = 0; i <= decades; i += step) ticks.push(lo * Math.pow(10, i));
    return {
      at: function (v) {
        return (Math.log10(Math.max(v, lo)) - Math.log10(lo)) / Math.log10(hi / lo);
      },
      ticks: ticks,
    };
  }

  function timeLabel(seconds) {
    if (seconds === 0) return "now";
    if (seconds % 60 === 0) return "\u2212" + seconds / 60 + " min";
    return "\u2212" + seconds + " s";
  }

  function drawChart(chart) {
    var figure = $(chart.id);
    var canvas = figure.querySelector("canvas");
    var ratio = window.devicePixelRatio || 1;
    var width = canvas.clientWidth;
    var height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    var lines = chart.lines();
    var seconds = span();
    var tMax = samples.length ? samples[samples.length - 1].t : Date.now() / 1000;
    var tMin = tMax - seconds;
    var max = 0;
    var min = Infinity;
    lines.forEach(function (line) {
      samples.forEach(function (s) {
        var v = line.get(s);
        if (v === null || v === undefined) return;
        if (v > max) max = v;
        if (v > 0 && v < min) min = v;
      });
    });
    var scale = chart.log && max > 0 ? logScale(min, max) : linearScale(max, chart);

    var left = 62;
    var right = 10;
    var top = 8;
    var bottom = 20;
    var plotW = width - left - right;
    var plotH = height - top - bottom;
    function x(t) { return left + ((t - tMin) / seconds) * plotW; }
    function y(v) { return top + plotH - scale.at(v) * plotH; }

    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    scale.ticks.forEach(function (v, i) {
      var yy = Math.round(y(v)) + 0.5;
      ctx.strokeStyle = i === 0 ? "#b9c0cc" : "#eceef2";
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(left + plotW, yy);
      ctx.stroke();
      ctx.fillStyle = "#5d6677";
      ctx.textAlign = "right";
      ctx.fillText(chart.fmt(v) + (chart.unit && v ? chart.unit : ""), left - 6, yy);
    });
    ctx.textBaseline = "top";
    var step = seconds <= 60 ? 15 : 60;
    for (var ago = 0; ago <= seconds; ago += step) {
      var xx = Math.round(x(tMax - ago)) + 0.5;
      ctx.strokeStyle = "#eceef2";
      ctx.beginPath();
      ctx.moveTo(xx, top);
      ctx.lineTo(xx, top + plotH);
      ctx.stroke();
      ctx.fillStyle = "#5d6677";
      ctx.textAlign = ago === 0 ? "right" : ago === seconds ? "left" : "center";
      ctx.fillText(timeLabel(ago), xx, top + plotH + 5);
    }

    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top - 2, plotW, plotH + 4);
    ctx.clip();
    ctx.lineWidth = 1.75;
    ctx.lineJoin = "round";
    lines.forEach(function (line) {
      ctx.strokeStyle = line.color;
      ctx.fillStyle = line.color;
      var open = false;
      var single = null;
      var last = null;
      ctx.beginPath();
      samples.forEach(function (s, i) {
        var v = line.get(s);
        if (v === null || v === undefined) { open = false; return; }
        // Polls that failed for a while (the server stopped) leave a gap,
        // not a straight line over the time nothing was read.
        if (last !== null && s.t - last > GAP_SECONDS) open = false;
        last = s.t;
        if (!open) {
          ctx.moveTo(x(s.t), y(v));
          var next = samples[i + 1];
          single = !next || line.get(next) === null || line.get(next) === undefined ||
            next.t - s.t > GAP_SECONDS ? s : null;
          if (single) ctx.fillRect(x(s.t) - 1.5, y(v) - 1.5, 3, 3);
        } else {
          ctx.lineTo(x(s.t), y(v));
        }
        open = true;
      });
      ctx.stroke();
    });
    ctx.restore();

    var at = pick(hover);
    if (hover !== null && at) {
      var hx = Math.round(x(at.t)) + 0.5;
      ctx.strokeStyle = "#9aa3b2";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(hx, top);
      ctx.lineTo(hx, top + plotH);
      ctx.stroke();
    }
    legend(figure, chart, lines, at);

    if (!samples.length || (chart.id !== "chart-inflight" && chart.id !== "chart-rss" && samples.length < 2)) {
      ctx.fillStyle = "#8a93a3";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.font = "12px system-ui, sans-serif";
      ctx.fillText("waiting for a second reading\u2026", left + plotW / 2, top + plotH / 2);
    }
  }

  // The sample nearest to time t, or the latest one.
  function pick(t) {
    if (!samples.length) return null;
    if (t === null) return samples[samples.length - 1];
    var best = samples[0];
    samples.forEach(function (s) { if (Math.abs(s.t - t) < Math.abs(best.t - t)) best = s; });
    return best;
  }

  function legend(figure, chart, lines, at) {
    var list = figure.querySelector(".legend");
    var shown = lines;
    var extra = 0;
    if (chart.maxLegend && at) {
      // One line a worker: the legend names those of the moment shown, not
      // every worker recycled since the page opened.
      shown = lines.filter(function (line) {
        var v = line.get(at);
        return v !== null && v !== undefined;
      });
    }
    if (chart.maxLegend && shown.length > chart.maxLegend) {
      extra = shown.length - chart.maxLegend;
      shown = shown.slice(0, chart.maxLegend);
    }
    var items = shown.map(function (line) {
      var v = at ? line.get(at) : null;
      var text = v === null || v === undefined ? "\u2013" : chart.fmt(v) + (chart.unit || "");
      var swatch = h("span", { className: "swatch line" });
      swatch.style.background = line.color;
      return h("li", null, swatch, line.label + " ", h("span", { className: "value" }, text));
    });
    if (extra) items.push(h("li", null, "+" + extra + " more"));
    if (at && hover !== null) items.push(h("li", null, "at " + fmtClock(at.t)));
    list.replaceChildren.apply(list, items);
  }

  function renderCharts() {
    var seconds = span();
    setText("history-span", seconds === 60 ? "minute" : seconds / 60 + " minutes");
    CHARTS.forEach(drawChart);
  }

  function hoverAt(event) {
    var canvas = event.currentTarget;
    var rect = canvas.getBoundingClientRect();
    var plotW = rect.width - 62 - 10;
    var seconds = span();
    var tMax = samples.length ? samples[samples.length - 1].t : 0;
    var t = tMax - seconds + ((event.clientX - rect.left - 62) / plotW) * seconds;
    hover = clamp(t, tMax - seconds, tMax);
    renderCharts();
  }

  // -- start ----------------------------------------------------------------

  setText("slow-after", fmtDuration(SLOW_AFTER));
  buildSlowHead();
  document.querySelectorAll(".chart canvas").forEach(function (canvas) {
    canvas.addEventListener("mousemove", hoverAt);
    canvas.addEventListener("mouseleave", function () { hover = null; renderCharts(); });
  });
  var resizeTimer = 0;
  window.addEventListener("resize", function () {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(renderCharts, 100);
  });
  renderCharts();
  poll();

  // For tests and the curious: the arithmetic the charts use.
  window.mmstatsPage = Object.freeze({
    quantile: quantile, representative: representative, histDelta: histDelta,
    api: API, history: function () { return JSON.parse(JSON.stringify(samples)); },
  });
})();
