/* Care Companion monitoring dashboard.
 *
 * Signs in with /v1/auth/token (the token lives in sessionStorage only), then draws what
 * /v1/monitoring/drift and /v1/monitoring/health return, every 15 s. A 401 from any call signs out and
 * shows the sign-in form with a message. Everything the API returns is written with textContent.
 *
 * Number formats (the end-to-end test mirrors them):
 *   p-values      3 significant digits: p >= 0.001 -> p.toPrecision(3) ("0.0635", "1.00"),
 *                 p < 0.001 -> p.toExponential(2) ("6.61e-35"); null (test not run yet) -> "—"
 *   rates         x.toFixed(3), with counts for online figures: "0.940 (47/50)"; null -> "—"
 *   counts        integers, no separators ("1234")
 *   latency       x.toFixed(1) + " ms"; throughput x.toFixed(1) + " /min"
 *   medians       x.toPrecision(4) with trailing zeros (and a bare ".") removed ("0.3348", "96", "256")
 *   KL baseline   x.toPrecision(3)
 *   times         the API's ISO time with "T" -> " " and "+00:00" -> " UTC"
 */
(function () {
  "use strict";

  var TOKEN_KEY = "careCompanion.dashboard.token";
  var USER_KEY = "careCompanion.dashboard.user";
  var REFRESH_MS = 15000;
  var FAMILIES = ["features", "embedding", "class_mix", "confidence", "rejections"];
  var FAMILY_LABELS = {
    features: "Image features (KS)",
    embedding: "Embedding (MMD)",
    class_mix: "Class mix (χ²)",
    confidence: "Confidence (KS)",
    rejections: "Rejections (binomial)",
  };
  var FAMILY_COLORS = {
    features: "#0072B2",
    embedding: "#E69F00",
    class_mix: "#009E73",
    confidence: "#CC79A7",
    rejections: "#D55E00",
  };
  var TASK_TITLES = {
    chest: "Chest X-ray",
    wrist: "Wrist fracture",
  };
  var TASK_SUBTITLES = {
    chest: "Frontal radiograph · normal / pneumonia / tuberculosis",
    wrist: "PA and lateral views · normal / fracture",
  };
  var REFERENCE_COLOR = "#94a3b8";
  var CURRENT_COLOR = "#2563eb";
  var ALIASES = ["staging", "canary", "production"];

  var timer = null;
  var loading = false;
  var queued = null; // a refresh asked for while one was running: null, "plain" or "drift"
  var generation = 0; // bumps on sign-out so late answers of an old session are dropped

  // -- formats ------------------------------------------------------------------------------------------------

  var DASH = "—";

  function isNum(x) {
    return typeof x === "number" && isFinite(x);
  }

  function fmtP(p) {
    if (!isNum(p)) return DASH;
    return p < 0.001 ? p.toExponential(2) : p.toPrecision(3);
  }

  function fmtRate(x) {
    return isNum(x) ? x.toFixed(3) : DASH;
  }

  function fmtCount(x) {
    return isNum(x) ? String(Math.round(x)) : DASH;
  }

  function fmtMs(x) {
    return isNum(x) ? x.toFixed(1) + " ms" : DASH;
  }

  function fmtPerMinute(x) {
    return isNum(x) ? x.toFixed(1) + " /min" : DASH;
  }

  function fmtNum(x) {
    if (!isNum(x)) return DASH;
    var s = x.toPrecision(4);
    if (s.indexOf("e") < 0 && s.indexOf(".") >= 0) s = s.replace(/0+$/, "").replace(/\.$/, "");
    return s;
  }

  function fmtKl(x) {
    return isNum(x) ? x.toPrecision(3) : DASH;
  }

  function fmtTime(iso) {
    if (!iso) return DASH;
    return String(iso).replace("T", " ").replace("+00:00", " UTC").replace(/Z$/, " UTC");
  }

  function fmtRatio(rate, part, whole) {
    return fmtRate(rate) + " (" + part + "/" + whole + ")";
  }

  function text(x) {
    return x === null || x === undefined || x === "" ? DASH : String(x);
  }

  // -- DOM helpers ---------------------------------------------------------------------------------------------

  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) return;
        if (k === "text") node.textContent = String(v);
        else if (k === "class") node.className = v;
        else if (k === "testid") node.setAttribute("data-testid", v);
        else node.setAttribute(k, v === true ? "" : String(v));
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) child.forEach(function (c) { if (c) node.appendChild(c); });
      else node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function $(id) {
    return document.getElementById(id);
  }

  function panel(title, testid, help, wide) {
    var body = el("div", { class: "panel-body" });
    var node = el("section", { class: wide ? "panel wide" : "panel", testid: testid },
      el("h3", { text: title }),
      help ? el("p", { class: "panel-help", text: help }) : null,
      body);
    return { node: node, body: body };
  }

  function kv(rows) {
    var dl = el("dl", { class: "kv" });
    rows.forEach(function (r) {
      dl.appendChild(el("dt", { text: r[0] }));
      dl.appendChild(el("dd", { testid: r[2], text: r[1], "data-value": r[3] }));
    });
    return dl;
  }

  // -- API -----------------------------------------------------------------------------------------------------

  function AuthLost(message) {
    this.message = message;
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function api(path) {
    var mine = generation;
    return fetch(path, { headers: { Authorization: "Bearer " + token(), Accept: "application/json" }, cache: "no-store" })
      .then(function (res) {
        if (mine !== generation) throw new AuthLost(null);
        if (res.status === 401) {
          throw new AuthLost("Your session has expired or is no longer valid. Please sign in again.");
        }
        return res.json().catch(function () { return {}; }).then(function (body) {
          if (!res.ok) {
            var why = body && (body.detail || body.error);
            throw new Error(path.split("?")[0] + " answered " + res.status + (why ? ": " + why : ""));
          }
          return body;
        });
      });
  }

  // -- sign-in -------------------------------------------------------------------------------------------------

  function showMessage(message) {
    var box = $("signin-message");
    if (message) {
      box.textContent = message;
      box.hidden = false;
    } else {
      box.textContent = "";
      box.hidden = true;
    }
  }

  function showSignIn(message) {
    generation += 1;
    if (timer) clearTimeout(timer);
    timer = null;
    loading = false;
    queued = null;
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
    $("tasks").replaceChildren();
    $("tasknav").replaceChildren();
    $("load-error").hidden = true;
    $("dashboard").hidden = true;
    $("session").hidden = true;
    $("last-updated").textContent = "Not loaded yet";
    $("last-updated").removeAttribute("data-at");
    document.body.removeAttribute("data-loaded");
    $("signin").hidden = false;
    $("password").value = "";
    showMessage(message || null);
    $("username").focus();
  }

  function showDashboard() {
    $("signin").hidden = true;
    $("dashboard").hidden = false;
    $("session").hidden = false;
    var user = sessionStorage.getItem(USER_KEY) || "";
    $("who").textContent = user ? "Signed in as " + user : "";
  }

  function signIn(event) {
    event.preventDefault();
    var button = $("signin-button");
    button.disabled = true;
    showMessage(null);
    var form = new URLSearchParams();
    form.set("username", $("username").value);
    form.set("password", $("password").value);
    fetch("/v1/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
      body: form.toString(),
    })
      .then(function (res) {
        return res.json().catch(function () { return {}; }).then(function (body) {
          if (res.status === 401) throw new Error("Wrong username or password.");
          if (!res.ok || !body.access_token) throw new Error((body && body.detail) || "Sign-in failed (" + res.status + ").");
          return body;
        });
      })
      .then(function (body) {
        sessionStorage.setItem(TOKEN_KEY, body.access_token);
        sessionStorage.setItem(USER_KEY, $("username").value + " (" + body.role + ")");
        $("password").value = "";
        showDashboard();
        refresh(false);
      })
      .catch(function (err) {
        showMessage(err.message || String(err));
      })
      .then(function () {
        button.disabled = false;
      });
  }

  // -- loading -------------------------------------------------------------------------------------------------

  function schedule() {
    if (timer) clearTimeout(timer);
    timer = setTimeout(function () { refresh(false); }, REFRESH_MS);
  }

  function refresh(checkDrift) {
    if (!token()) {
      showSignIn(null);
      return;
    }
    if (loading) {
      queued = checkDrift || queued === "drift" ? "drift" : "plain";
      return;
    }
    loading = true;
    var mine = generation;
    document.body.setAttribute("data-loading", "true");
    var drift = api("/v1/monitoring/drift?refresh=" + (checkDrift ? "true" : "false"));
    var health = api("/v1/monitoring/health");
    Promise.allSettled([drift, health]).then(function (results) {
      if (mine !== generation) return;
      loading = false;
      document.body.removeAttribute("data-loading");
      var lost = results.filter(function (r) { return r.status === "rejected" && r.reason instanceof AuthLost; });
      if (lost.length) {
        if (lost[0].reason.message) showSignIn(lost[0].reason.message);
        return;
      }
      var errors = results.filter(function (r) { return r.status === "rejected"; }).map(function (r) {
        return r.reason && r.reason.message ? r.reason.message : String(r.reason);
      });
      var d = results[0].status === "fulfilled" ? results[0].value : null;
      var h = results[1].status === "fulfilled" ? results[1].value : null;
      var box = $("load-error");
      if (errors.length) {
        box.textContent = "Some figures could not be loaded: " + errors.join("; ");
        box.hidden = false;
      } else {
        box.hidden = true;
      }
      if (d || h) render(d, h);
      if (queued) {
        var again = queued === "drift";
        queued = null;
        refresh(again);
      } else {
        schedule();
      }
    });
  }

  // -- rendering -----------------------------------------------------------------------------------------------

  function render(drift, health) {
    var tasks = [];
    [health && health.tasks, drift && drift.tasks].forEach(function (group) {
      Object.keys(group || {}).forEach(function (t) { if (tasks.indexOf(t) < 0) tasks.push(t); });
    });
    var nav = [];
    var sections = tasks.map(function (t) {
      var td = drift && drift.tasks ? drift.tasks[t] : null;
      var th = health && health.tasks ? health.tasks[t] : null;
      nav.push(el("a", { href: "#task-" + t, class: "navlink", text: TASK_TITLES[t] || t }));
      return renderTask(t, td, th, !!drift, !!health);
    });
    $("tasknav").replaceChildren.apply($("tasknav"), nav);
    $("tasks").replaceChildren.apply($("tasks"), sections);
    var now = new Date();
    var stamp = $("last-updated");
    stamp.textContent = "Last updated " + CareCharts.timeLabel(now.getTime(), true) + " UTC";
    stamp.setAttribute("data-at", now.toISOString());
    document.body.setAttribute("data-loaded", now.toISOString());
  }

  function badgeOf(taskDrift) {
    var status = taskDrift ? taskDrift.status : null;
    if (!taskDrift) return { state: "unavailable", text: "Drift check unavailable", reason: "the drift figures could not be loaded" };
    if (!status) return { state: "unavailable", text: "Drift check unavailable", reason: taskDrift.reason || "no model is loaded" };
    if (!status.available) return { state: "unavailable", text: "Drift check unavailable", reason: status.reason || "no reference profile" };
    if (status.drifted === true) return { state: "drift", text: "Drift detected", reason: "flagged: " + status.flagged.map(function (f) { return FAMILY_LABELS[f] || f; }).join(", ") };
    if (status.drifted === false) return { state: "no-drift", text: "No drift", reason: "no test family below α = " + status.alpha };
    return { state: "insufficient", text: "Not enough data", reason: "needs " + status.min_images + " images of the task in the window; " + status.window_images + " so far" };
  }

  function sum(obj) {
    return Object.keys(obj || {}).reduce(function (acc, k) { return acc + (isNum(obj[k]) ? obj[k] : 0); }, 0);
  }

  function renderTask(t, td, th, haveDrift, haveHealth) {
    var status = td ? td.status : null;
    var model = th ? th.model : null;
    var badge = badgeOf(haveDrift ? td : null);
    var section = el("section", { class: "task", id: "task-" + t, testid: t + "-section" });

    var head = el("div", { class: "task-head" },
      el("div", null,
        el("h2", { text: TASK_TITLES[t] || t }),
        el("p", { class: "muted", text: TASK_SUBTITLES[t] || "" })),
      el("div", { class: "task-badges" },
        el("span", {
          class: "badge badge-model " + (model && model.loaded ? "ok" : "bad"),
          testid: t + "-model-loaded",
          text: model ? (model.loaded ? "Model loaded" : "Model not loaded") : "Model status unknown",
        }),
        el("span", { class: "badge badge-drift " + badge.state, testid: t + "-drift-badge", "data-state": badge.state, text: badge.text })));
    section.appendChild(head);
    if (model && !model.loaded) {
      section.appendChild(el("p", { class: "message warn", testid: t + "-model-reason", text: "Not serving: " + text(model.reason) }));
    }

    // headline tiles
    var traffic = th ? th.traffic : null;
    var online = th ? th.online : null;
    var tiles = el("div", { class: "tiles" });
    tiles.appendChild(CareCharts.statTile({
      label: "Drift window",
      value: status ? fmtCount(status.window_images) : DASH,
      raw: status ? status.window_images : null,
      testid: t + "-window-images",
      sub: status ? "images · " + status.window_inputs + " of " + status.window_size + " inputs" : "no drift check",
      subTestid: t + "-window-detail",
    }));
    tiles.appendChild(CareCharts.statTile({
      label: "Predictions (5 min)",
      value: traffic ? fmtCount(traffic.predictions) : DASH,
      raw: traffic ? traffic.predictions : null,
      testid: t + "-traffic-predictions",
      sub: traffic ? fmtPerMinute(traffic.per_minute) : "",
      subTestid: t + "-traffic-per-minute",
    }));
    tiles.appendChild(CareCharts.statTile({
      label: "Latency p50",
      value: traffic ? fmtMs(traffic.latency_ms_p50) : DASH,
      raw: traffic ? traffic.latency_ms_p50 : null,
      testid: t + "-latency-p50",
      sub: "p95 " + (traffic ? fmtMs(traffic.latency_ms_p95) : DASH),
      subTestid: t + "-latency-p95",
    }));
    tiles.appendChild(CareCharts.statTile({
      label: "Online sensitivity",
      value: online ? fmtRate(online.sensitivity) : DASH,
      raw: online ? online.sensitivity : null,
      testid: t + "-online-sensitivity-value",
      sub: online ? online.true_positives + "/" + (online.true_positives + online.false_negatives) + " diseased studies found" : (th && th.online_error) || "",
      tone: online && online.false_negatives > 0 ? "warn" : null,
    }));
    tiles.appendChild(CareCharts.statTile({
      label: "Missed disease",
      value: online ? fmtCount(online.false_negatives) : DASH,
      raw: online ? online.false_negatives : null,
      testid: t + "-online-missed",
      sub: online ? "false negatives in " + online.studies + " confirmed studies" : "",
      tone: online && online.false_negatives > 0 ? "bad" : null,
    }));
    section.appendChild(tiles);

    var grid = el("div", { class: "grid" });
    grid.appendChild(driftPanel(t, td, status, badge, haveDrift));
    grid.appendChild(historyPanel(t, td, status));
    grid.appendChild(featuresPanel(t, status));
    grid.appendChild(classMixPanel(t, status));
    grid.appendChild(confidencePanel(t, status));
    grid.appendChild(modelPanel(t, model, haveHealth));
    grid.appendChild(outcomesPanel(t, th));
    grid.appendChild(onlinePanel(t, th));
    grid.appendChild(releasePanel(t));
    section.appendChild(grid);
    return section;
  }

  function modelPanel(t, model, haveHealth) {
    var p = panel("Model", t + "-model-panel");
    if (!model) {
      p.body.appendChild(el("p", { class: "muted", text: haveHealth ? "No health figures for this task." : "Health figures could not be loaded." }));
      return p.node;
    }
    p.body.appendChild(kv([
      ["Status", model.loaded ? "loaded" : "not loaded", t + "-model-status"],
      ["Version", text(model.version), t + "-model-version"],
      ["Loaded by alias", text(model.alias), t + "-model-alias"],
      ["Precision", text(model.precision), t + "-model-precision"],
      ["Demo model", model.demo === null || model.demo === undefined ? DASH : model.demo ? "yes (not for clinical use)" : "no", t + "-model-demo"],
      ["Loaded at", fmtTime(model.loaded_at), t + "-model-loaded-at"],
      ["Backbone", text(model.backbone), t + "-model-backbone"],
      ["Data set", text(model.dataset_version), t + "-model-dataset"],
      ["Source", text(model.reference), t + "-model-reference"],
    ]));
    var aliases = model.aliases || {};
    var names = ALIASES.concat(Object.keys(aliases).filter(function (a) { return ALIASES.indexOf(a) < 0; }));
    var table = el("table", { class: "table compact", testid: t + "-aliases" },
      el("thead", null, el("tr", null, el("th", { text: "Registry alias" }), el("th", { class: "num", text: "Version" }))),
      el("tbody", null, names.map(function (a) {
        var v = Object.prototype.hasOwnProperty.call(aliases, a) ? aliases[a] : null;
        return el("tr", null, el("td", { text: a }), el("td", { class: "num", testid: t + "-alias-" + a, text: v === null || v === undefined ? DASH : String(v) }));
      })));
    if (!Object.keys(aliases).length) p.body.appendChild(el("p", { class: "muted small", text: "The model registry did not answer; aliases unknown." }));
    p.body.appendChild(table);
    return p.node;
  }

  function driftPanel(t, td, status, badge, haveDrift) {
    var p = panel("Drift status", t + "-drift-panel", "Each family tests the rolling window against the model's reference profile.");
    p.body.appendChild(el("div", { class: "drift-summary" },
      el("span", { class: "badge big " + badge.state, text: badge.text }),
      el("span", { class: "drift-reason", testid: t + "-drift-reason", text: badge.reason })));
    if (!haveDrift || !status) return p.node;
    p.body.appendChild(kv([
      ["Window", status.window_images + " images · " + status.window_inputs + " of " + status.window_size + " inputs", t + "-window-summary"],
      ["Window size (inputs)", fmtCount(status.window_size), t + "-window-size"],
      ["Inputs in window", fmtCount(status.window_inputs), t + "-window-inputs"],
      ["Tests need (images)", fmtCount(status.min_images), t + "-min-images"],
      ["α (whole verdict)", String(status.alpha), t + "-alpha"],
      ["Checked at", fmtTime(status.checked_at), t + "-checked-at"],
    ]));
    if (!status.available) return p.node;
    var flagged = status.flagged || [];
    var rows = FAMILIES.concat(Object.keys(status.p_values || {}).filter(function (f) { return FAMILIES.indexOf(f) < 0; })).map(function (f) {
      var adjusted = status.p_values ? status.p_values[f] : null;
      var raw = status.raw_p_values ? status.raw_p_values[f] : null;
      var isFlagged = flagged.indexOf(f) >= 0;
      return el("tr", { class: isFlagged ? "flagged" : null, testid: t + "-family-row-" + f },
        el("td", { class: "family" }, el("span", { class: "swatch fam-" + f }), FAMILY_LABELS[f] || f),
        el("td", { class: "num", testid: t + "-pvalue-" + f, "data-value": isNum(adjusted) ? String(adjusted) : "", "data-flagged": isFlagged ? "true" : "false", text: fmtP(adjusted) }),
        el("td", { class: "num muted", testid: t + "-raw-pvalue-" + f, text: fmtP(raw) }),
        el("td", { class: "flag", text: isFlagged ? "flagged" : isNum(adjusted) ? "" : "not run" }));
    });
    p.body.appendChild(el("table", { class: "table", testid: t + "-pvalues" },
      el("thead", null, el("tr", null, el("th", { text: "Test family" }), el("th", { class: "num", text: "Adjusted p" }), el("th", { class: "num", text: "Raw p" }), el("th", { text: "" }))),
      el("tbody", null, rows)));
    return p.node;
  }

  function historyPanel(t, td, status) {
    var p = panel("p-values over time", t + "-history-panel", "Holm-adjusted p-value of each family per check (log scale); below the dashed α line a family is flagged.", true);
    var history = (td && td.history) || [];
    var series = FAMILIES.map(function (f) {
      return {
        name: FAMILY_LABELS[f],
        color: FAMILY_COLORS[f],
        points: history.map(function (h) {
          var v = h.p_values ? h.p_values[f] : null;
          return { t: Date.parse(h.at), v: isNum(v) ? v : null };
        }),
      };
    });
    var holder = el("div", { class: "chart-holder", testid: t + "-pvalue-history", "data-checks": String(history.length) });
    holder.appendChild(CareCharts.lineChart({
      series: series,
      yScale: "log",
      floor: 1e-16,
      refLine: status && status.available ? { value: status.alpha, label: "α = " + status.alpha, color: "#c0392b" } : null,
      label: (TASK_TITLES[t] || t) + ": p-values over time",
      format: fmtP,
      emptyText: status && !status.available ? "drift monitoring unavailable" : "no drift checks with results yet",
      width: 900,
      height: 290,
    }));
    p.body.appendChild(holder);
    p.body.appendChild(el("p", { class: "muted small", testid: t + "-history-count", text: history.length + " check" + (history.length === 1 ? "" : "s") + " in the last 24 h" }));
    return p.node;
  }

  function featuresPanel(t, status) {
    var p = panel("Image features (KS per feature)", t + "-features-panel", "Two-sample KS test per feature, Holm-adjusted within the family.");
    var features = (status && status.features) || [];
    if (!features.length) {
      p.body.appendChild(el("p", { class: "muted", text: status && status.available ? "Not tested yet: too few images in the window." : "Unavailable." }));
      return p.node;
    }
    var alpha = status.alpha;
    p.body.appendChild(el("div", { class: "table-wrap" }, el("table", { class: "table compact", testid: t + "-ks-table" },
      el("thead", null,
        el("tr", null, el("th", { text: "" }), el("th", { class: "num group", colspan: "2", text: "Median" }), el("th", { text: "" })),
        el("tr", null,
          el("th", { text: "Feature" }), el("th", { class: "num", text: "Reference" }),
          el("th", { class: "num", text: "Current" }), el("th", { class: "num", text: "Adjusted p" }))),
      el("tbody", null, features.map(function (f) {
        var low = isNum(f.adjusted) && f.adjusted < alpha;
        return el("tr", { class: low ? "flagged" : null, testid: t + "-ks-row-" + f.name },
          el("td", { text: f.name }),
          el("td", { class: "num", testid: t + "-ks-" + f.name + "-reference", text: fmtNum(f.reference_median) }),
          el("td", { class: "num", testid: t + "-ks-" + f.name + "-current", text: fmtNum(f.current_median) }),
          el("td", { class: "num", testid: t + "-ks-" + f.name + "-adjusted", "data-value": String(f.adjusted), text: fmtP(f.adjusted) }));
      })))));
    return p.node;
  }

  // Grouped bars of a drift Distribution (bins, reference shares, current shares) in a chart holder.
  function referenceVsCurrent(t, status, dist, testidSuffix, what) {
    var holder = el("div", { class: "chart-holder", testid: t + testidSuffix });
    holder.appendChild(CareCharts.groupedBars({
      bins: dist ? dist.bins : [],
      groups: dist ? [
        { name: "reference", color: REFERENCE_COLOR, values: dist.reference },
        { name: "current", color: CURRENT_COLOR, values: dist.current },
      ] : [],
      format: fmtRate,
      label: (TASK_TITLES[t] || t) + ": " + what + ", reference vs current",
      emptyText: status && !status.available ? "drift monitoring unavailable" : "no inputs yet",
    }));
    return holder;
  }

  function classMixPanel(t, status) {
    var p = panel("Class mix", t + "-class-mix-panel", "Share of decided classes: validation reference vs the current window.");
    var mix = status && status.class_mix;
    p.body.appendChild(referenceVsCurrent(t, status, mix, "-class-mix-chart", "class mix"));
    if (mix) {
      p.body.appendChild(el("table", { class: "table compact" },
        el("thead", null, el("tr", null, el("th", { text: "Class" }), el("th", { class: "num", text: "Reference" }), el("th", { class: "num", text: "Current" }))),
        el("tbody", null, mix.bins.map(function (b, i) {
          return el("tr", null, el("td", { text: b }),
            el("td", { class: "num", testid: t + "-mix-" + b + "-reference", text: fmtRate(mix.reference[i]) }),
            el("td", { class: "num", testid: t + "-mix-" + b + "-current", text: fmtRate(mix.current[i]) }));
        }))));
    }
    return p.node;
  }

  function confidencePanel(t, status) {
    var p = panel("Confidence and rejections", t + "-confidence-panel", "Probability of the decided class (images of the task), and how many inputs were refused.");
    var conf = status && status.confidence;
    p.body.appendChild(referenceVsCurrent(t, status, conf, "-confidence-chart", "confidence histogram"));
    var rate = (status && status.rejection_rate) || {};
    var mean = (status && status.confidence_mean) || {};
    p.body.appendChild(el("table", { class: "table compact" },
      el("thead", null, el("tr", null, el("th", { text: "" }), el("th", { class: "num", text: "Reference" }), el("th", { class: "num", text: "Current" }))),
      el("tbody", null,
        el("tr", null, el("td", { text: "Rejection rate" }),
          el("td", { class: "num", testid: t + "-rejection-reference", text: fmtRate(rate.reference) }),
          el("td", { class: "num", testid: t + "-rejection-current", text: fmtRate(rate.current) })),
        el("tr", null, el("td", { text: "Mean confidence" }),
          el("td", { class: "num", testid: t + "-confidence-mean-reference", text: fmtRate(mean.reference) }),
          el("td", { class: "num", testid: t + "-confidence-mean-current", text: fmtRate(mean.current) })))));
    p.body.appendChild(kv([
      ["Naive baseline: KL of pixel histograms", fmtKl(status ? status.kl_baseline : null), t + "-kl-baseline"],
    ]));
    p.body.appendChild(el("p", { class: "muted small", text: "The KL figure is a naive reference only; it does not set the alarm." }));
    return p.node;
  }

  function trafficPanel(t, th, body) {
    var traffic = th && th.traffic;
    body.appendChild(el("h4", { text: "Last 5 minutes" }));
    if (!traffic) {
      body.appendChild(el("p", { class: "muted", text: "Unavailable." }));
      return;
    }
    body.appendChild(kv([
      ["Successful predictions", fmtCount(traffic.predictions), t + "-traffic-count"],
      ["Throughput", fmtPerMinute(traffic.per_minute), t + "-throughput"],
      ["Latency p50", fmtMs(traffic.latency_ms_p50), t + "-latency-p50-detail"],
      ["Latency p95", fmtMs(traffic.latency_ms_p95), t + "-latency-p95-detail"],
    ]));
  }

  function outcomesPanel(t, th) {
    var p = panel("Traffic and outcomes", t + "-outcomes-panel", "Successful predictions and latency over the last 5 minutes; predictions by decided class and refused inputs by reason since start-up.");
    trafficPanel(t, th, p.body);
    p.body.appendChild(el("h4", { text: "Since start-up" }));
    var predictions = (th && th.predictions) || {};
    var rejected = (th && th.rejected) || {};
    var labels = Object.keys(predictions).sort();
    var reasons = Object.keys(rejected).sort();
    p.body.appendChild(el("div", { class: "totals" },
      el("div", null, el("span", { class: "total-label", text: "Predictions" }),
        el("span", { class: "total-value", testid: t + "-predictions-total", text: th ? fmtCount(sum(predictions)) : DASH })),
      el("div", null, el("span", { class: "total-label", text: "Rejected inputs" }),
        el("span", { class: "total-value", testid: t + "-rejected-total", text: th ? fmtCount(sum(rejected)) : DASH }))));
    p.body.appendChild(el("h4", { class: "sub", text: "Predictions by class" }));
    p.body.appendChild(el("div", { class: "chart-holder", testid: t + "-predictions-chart" }, CareCharts.barChart({
      items: labels.map(function (l) { return { label: l, value: predictions[l], testid: t + "-prediction-" + l }; }),
      format: fmtCount,
      color: CURRENT_COLOR,
      label: (TASK_TITLES[t] || t) + ": predictions by class",
      emptyText: "no predictions yet",
    })));
    p.body.appendChild(el("h4", { class: "sub", text: "Rejected inputs by reason" }));
    p.body.appendChild(el("div", { class: "chart-holder", testid: t + "-rejected-chart" }, CareCharts.barChart({
      items: reasons.map(function (r) { return { label: r.replace(/_/g, " "), value: rejected[r], testid: t + "-rejected-" + r }; }),
      format: fmtCount,
      color: "#b45309",
      labelWidth: 150,
      label: (TASK_TITLES[t] || t) + ": rejected inputs by reason",
      emptyText: "no rejected inputs",
    })));
    return p.node;
  }

  function onlinePanel(t, th) {
    var p = panel("Online performance (radiologists' verdicts)", t + "-online-panel", "Over the last confirmed studies that have a model prediction.");
    var online = th && th.online;
    if (!online) {
      p.body.appendChild(el("p", { class: "message warn", testid: t + "-online-error", text: (th && th.online_error) || "Unavailable." }));
      return p.node;
    }
    var diseased = online.true_positives + online.false_negatives;
    var healthy = online.true_negatives + online.false_positives;
    p.body.appendChild(kv([
      ["Sensitivity", fmtRatio(online.sensitivity, online.true_positives, diseased), t + "-online-sensitivity", online.sensitivity],
      ["Specificity", fmtRatio(online.specificity, online.true_negatives, healthy), t + "-online-specificity", online.specificity],
      ["Accuracy", fmtRatio(online.accuracy, online.correct, online.studies), t + "-online-accuracy", online.accuracy],
      ["Studies used", fmtCount(online.studies) + " (window " + online.window + ")", t + "-online-studies"],
      ["Missed disease (false negatives)", fmtCount(online.false_negatives), t + "-online-missed-detail"],
      ["False alarms (false positives)", fmtCount(online.false_positives), t + "-online-false-positives"],
      ["Confirmed without a prediction", fmtCount(online.without_prediction), t + "-online-without-prediction"],
    ]));
    if (online.false_negatives > 0) {
      p.body.appendChild(el("p", { class: "message bad small", text: online.false_negatives + " confirmed disease case(s) were called negative by the model." }));
    }
    return p.node;
  }

  function fmtInterval(rate) {
    if (!rate || !isNum(rate.value)) return DASH;
    return fmtRate(rate.value) + " (" + rate.hits + "/" + rate.total + "; 95% CI " + fmtRate(rate.low) + "–" + fmtRate(rate.high) + ")";
  }

  var VERDICT_TEXT = {
    promote: "Promote: the canary may go to production",
    rollback: "Roll back: the canary is worse than production",
    wait: "Wait: not enough evidence yet",
    no_canary: "No canary running",
  };

  // The canary report (GET /v1/releases/{task}): filled in when it arrives, so the rest of the page never waits.
  function releasePanel(t) {
    var p = panel("Release: production vs canary", t + "-release-panel", "Over the canary window; the rule is release promote --auto's.");
    p.body.appendChild(el("p", { class: "muted", testid: t + "-release-loading", text: "Loading the canary report…" }));
    api("/v1/releases/" + encodeURIComponent(t)).then(function (r) {
      var versions = [r.production, r.canary].filter(function (v) { return v; });
      var head = el("tr", null, el("th", { text: "" }), versions.map(function (v) {
        return el("th", { class: "num", text: v.alias + " (v" + v.version + ")" });
      }));
      var rows = [
        ["Confirmed studies", function (v) { return fmtCount(v.confirmed_studies) + (v.shadowed_studies ? " (" + v.shadowed_studies + " shadowed)" : ""); }, "studies"],
        ["Sensitivity", function (v) { return fmtInterval(v.sensitivity); }, "sensitivity"],
        ["Specificity", function (v) { return fmtInterval(v.specificity); }, "specificity"],
        ["Error rate", function (v) { return fmtInterval(v.error_rate); }, "errors"],
        ["Latency p95", function (v) { return fmtMs(v.latency_ms_p95); }, "latency"],
        ["Requests (refused)", function (v) { return fmtCount(v.requests) + " (" + fmtCount(v.refused) + ")"; }, "requests"],
        ["Drift checks (drifted)", function (v) { return fmtCount(v.drift_checks) + " (" + fmtCount(v.drifted_checks) + ")"; }, "drift"],
      ];
      var table = el("table", { class: "table compact", testid: t + "-release-table" },
        el("thead", null, head),
        el("tbody", null, rows.map(function (row) {
          return el("tr", null, el("td", { text: row[0] }), versions.map(function (v) {
            return el("td", { class: "num", testid: t + "-release-" + v.alias + "-" + row[2], text: row[1](v) });
          }));
        })));
      var tone = r.verdict === "rollback" ? "bad" : r.verdict === "promote" ? "ok" : "warn";
      var nodes = [
        el("p", { class: "badge big " + tone, testid: t + "-release-verdict", "data-verdict": r.verdict, text: VERDICT_TEXT[r.verdict] || r.verdict }),
        el("ul", { class: "small", testid: t + "-release-reasons" }, r.reasons.map(function (why) { return el("li", { text: why }); })),
      ];
      if (versions.length) nodes.push(table);
      if (r.agreement) {
        nodes.push(el("p", { class: "small", testid: t + "-release-agreement", text: "Same decision on " + fmtInterval(r.agreement.same_decision) + " of " + r.agreement.films + " shadowed films" }));
      }
      nodes.push(el("p", { class: "muted small", text: (r.since ? "Since " + fmtTime(r.since) : "All time") + " · " + r.mode + " mode, " + r.canary_percent + "% of patients" }));
      p.body.replaceChildren.apply(p.body, nodes);
    }).catch(function (err) {
      if (err instanceof AuthLost) return;
      p.body.replaceChildren(el("p", { class: "message warn", testid: t + "-release-error", text: "The canary report could not be loaded: " + (err && err.message ? err.message : String(err)) }));
    });
    return p.node;
  }

  // the formats, for checking them from outside (the end-to-end test compares them with its own mirror)
  window.CareDashboardFormats = { p: fmtP, rate: fmtRate, count: fmtCount, ms: fmtMs, median: fmtNum, kl: fmtKl };

  // -- start ---------------------------------------------------------------------------------------------------

  function start() {
    $("signin-form").addEventListener("submit", signIn);
    $("refresh").addEventListener("click", function () { refresh(false); });
    $("check-drift").addEventListener("click", function () { refresh(true); });
    $("sign-out").addEventListener("click", function () { showSignIn("You have signed out."); });
    if (token()) {
      showDashboard();
      refresh(false);
    } else {
      showSignIn(null);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
