/* Care Companion dashboard: small dependency-free SVG charts.
 *
 * Every function returns a DOM element ready to append; none of them touches the page otherwise.
 *   CareCharts.lineChart({series, yScale, yMin, yMax, refLine, ...})  lines over a UTC time axis
 *   CareCharts.barChart({items, ...})                                  horizontal bars with counts
 *   CareCharts.groupedBars({bins, groups, ...})                        reference vs current shares
 *   CareCharts.statTile({label, value, sub, testid, tone})             a big number with a caption
 * Data is written with textContent / attributes only (never parsed as HTML).
 */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";

  function svgEl(tag, attrs, text) {
    var el = document.createElementNS(SVG, tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (attrs[k] !== null && attrs[k] !== undefined) el.setAttribute(k, String(attrs[k]));
      });
    }
    if (text !== undefined && text !== null) el.textContent = String(text);
    return el;
  }

  function htmlEl(tag, cls, text) {
    var el = document.createElement(tag);
    if (cls) el.className = cls;
    if (text !== undefined && text !== null) el.textContent = String(text);
    return el;
  }

  function frame(width, height, label) {
    var svg = svgEl("svg", {
      viewBox: "0 0 " + width + " " + height,
      width: "100%",
      role: "img",
      "aria-label": label || "chart",
      class: "chart",
      preserveAspectRatio: "xMidYMid meet",
    });
    if (label) svg.appendChild(svgEl("title", null, label));
    return svg;
  }

  function empty(width, height, label, message) {
    var svg = frame(width, height, label);
    svg.appendChild(
      svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" }, message || "no data yet")
    );
    return svg;
  }

  function pad2(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function timeLabel(ms, withSeconds) {
    var d = new Date(ms);
    var s = pad2(d.getUTCHours()) + ":" + pad2(d.getUTCMinutes());
    return withSeconds ? s + ":" + pad2(d.getUTCSeconds()) : s;
  }

  function legend(svg, x, y, entries, maxWidth) {
    var cx = x;
    var cy = y;
    entries.forEach(function (e) {
      var w = 18 + e.name.length * 6.2 + 14;
      if (cx + w > x + maxWidth && cx > x) {
        cx = x;
        cy += 16;
      }
      if (e.dash) {
        svg.appendChild(svgEl("line", { x1: cx, y1: cy - 4, x2: cx + 14, y2: cy - 4, stroke: e.color, "stroke-width": 2, "stroke-dasharray": "4 3" }));
      } else {
        svg.appendChild(svgEl("rect", { x: cx, y: cy - 9, width: 12, height: 10, rx: 2, fill: e.color }));
      }
      svg.appendChild(svgEl("text", { x: cx + 18, y: cy, class: "chart-legend" }, e.name));
      cx += w;
    });
    return cy;
  }

  /* A line chart over time.
   * opts.series: [{name, color, points: [{t: epoch ms, v: number|null}]}] (null: a gap)
   * opts.yScale: "log" (values clamped to opts.floor, default 1e-12) or "linear"
   * opts.yMin / opts.yMax: the value range (log: defaults to the data's, widened to whole decades, max 1)
   * opts.refLine: {value, label, color} drawn dashed across the plot (e.g. alpha)
   */
  function lineChart(opts) {
    var width = opts.width || 560;
    var height = opts.height || 240;
    var label = opts.label || "line chart";
    var series = (opts.series || []).filter(function (s) {
      return s.points && s.points.some(function (p) { return p.v !== null && p.v !== undefined; });
    });
    if (!series.length) return empty(width, height, label, opts.emptyText);
    var log = opts.yScale === "log";
    var floor = opts.floor || 1e-12;
    var margin = { top: 12, right: 30, bottom: 30, left: 52 };
    var legendRows = Math.ceil(((opts.series || []).length + (opts.refLine ? 1 : 0)) / 4);
    var legendHeight = 16 * legendRows + 6;
    var plotW = width - margin.left - margin.right;
    var plotH = height - margin.top - margin.bottom - legendHeight;

    var ts = [];
    var vs = [];
    series.forEach(function (s) {
      s.points.forEach(function (p) {
        ts.push(p.t);
        if (p.v !== null && p.v !== undefined) vs.push(log ? Math.max(p.v, floor) : p.v);
      });
    });
    var t0 = Math.min.apply(null, ts);
    var t1 = Math.max.apply(null, ts);
    var spanMs = Math.max(t1 - t0, 10000);
    t0 -= spanMs * 0.04;
    t1 += spanMs * 0.04;
    var y0;
    var y1;
    if (log) {
      var lo = Math.min.apply(null, vs.concat(opts.refLine ? [opts.refLine.value] : []));
      y0 = opts.yMin !== undefined ? Math.log10(opts.yMin) : Math.floor(Math.log10(lo));
      y1 = opts.yMax !== undefined ? Math.log10(opts.yMax) : 0;
      if (y1 - y0 < 1) y0 = y1 - 1;
    } else {
      y0 = opts.yMin !== undefined ? opts.yMin : Math.min.apply(null, vs);
      y1 = opts.yMax !== undefined ? opts.yMax : Math.max.apply(null, vs);
      if (y1 === y0) y1 = y0 + 1;
    }
    function x(t) { return margin.left + ((t - t0) / (t1 - t0)) * plotW; }
    function y(v) {
      var u = log ? Math.log10(Math.max(v, floor)) : v;
      u = Math.min(Math.max(u, y0), y1);
      return margin.top + plotH - ((u - y0) / (y1 - y0)) * plotH;
    }

    var svg = frame(width, height, label);
    svg.appendChild(svgEl("rect", { x: margin.left, y: margin.top, width: plotW, height: plotH, class: "chart-plot" }));

    // y grid and ticks
    var yticks = [];
    if (log) {
      var span = y1 - y0;
      var step = Math.max(1, Math.ceil(span / 6));
      for (var e = Math.ceil(y1); e >= y0; e -= step) yticks.push({ v: Math.pow(10, e), text: e === 0 ? "1" : "1e" + e });
    } else {
      for (var k = 0; k <= 4; k++) {
        var v = y0 + ((y1 - y0) * k) / 4;
        yticks.push({ v: v, text: Number(v.toPrecision(3)).toString() });
      }
    }
    yticks.forEach(function (tk) {
      var yy = y(tk.v);
      svg.appendChild(svgEl("line", { x1: margin.left, x2: margin.left + plotW, y1: yy, y2: yy, class: "chart-grid" }));
      svg.appendChild(svgEl("text", { x: margin.left - 6, y: yy + 4, "text-anchor": "end", class: "chart-tick" }, tk.text));
    });

    // time axis (UTC): ticks at round multiples of a step that gives at most ~7 of them
    var nx = Math.max(2, Math.min(7, Math.floor(plotW / 90)));
    var steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
    var stepMs = steps[steps.length - 1] * 1000;
    for (var si = 0; si < steps.length; si++) {
      if ((t1 - t0) / (steps[si] * 1000) <= nx) {
        stepMs = steps[si] * 1000;
        break;
      }
    }
    var withSeconds = stepMs < 60000;
    for (var t = Math.ceil(t0 / stepMs) * stepMs; t <= t1; t += stepMs) {
      var xx = x(t);
      svg.appendChild(svgEl("line", { x1: xx, x2: xx, y1: margin.top + plotH, y2: margin.top + plotH + 4, class: "chart-axis" }));
      svg.appendChild(svgEl("text", { x: xx, y: margin.top + plotH + 17, "text-anchor": "middle", class: "chart-tick" }, timeLabel(t, withSeconds)));
    }
    svg.appendChild(svgEl("text", { x: margin.left + plotW, y: margin.top + plotH + 28, "text-anchor": "end", class: "chart-axis-label" }, "UTC"));
    if (opts.yLabel) {
      svg.appendChild(svgEl("text", { x: 12, y: margin.top + plotH / 2, transform: "rotate(-90 12 " + (margin.top + plotH / 2) + ")", "text-anchor": "middle", class: "chart-axis-label" }, opts.yLabel));
    }

    if (opts.refLine) {
      var ry = y(opts.refLine.value);
      svg.appendChild(svgEl("line", { x1: margin.left, x2: margin.left + plotW, y1: ry, y2: ry, stroke: opts.refLine.color || "#c0392b", "stroke-width": 1.5, "stroke-dasharray": "5 4" }));
    }

    series.forEach(function (s) {
      var pts = s.points.slice().sort(function (a, b) { return a.t - b.t; });
      var d = "";
      var pen = false;
      pts.forEach(function (p) {
        if (p.v === null || p.v === undefined) {
          pen = false;
          return;
        }
        d += (pen ? "L" : "M") + x(p.t).toFixed(1) + " " + y(p.v).toFixed(1) + " ";
        pen = true;
      });
      var g = svgEl("g", { class: "chart-series", "data-series": s.name });
      g.appendChild(svgEl("path", { d: d.trim(), fill: "none", stroke: s.color, "stroke-width": 2, "stroke-linejoin": "round" }));
      pts.forEach(function (p) {
        if (p.v === null || p.v === undefined) return;
        var c = svgEl("circle", { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2.6, fill: s.color });
        c.appendChild(svgEl("title", null, s.name + ": " + (opts.format ? opts.format(p.v) : p.v) + " at " + timeLabel(p.t, true) + " UTC"));
        g.appendChild(c);
      });
      svg.appendChild(g);
    });

    var entries = (opts.series || []).map(function (s) { return { name: s.name, color: s.color }; });
    if (opts.refLine) entries.push({ name: opts.refLine.label || "reference", color: opts.refLine.color || "#c0392b", dash: true });
    legend(svg, margin.left, height - legendHeight + 12, entries, plotW);
    return svg;
  }

  /* Horizontal bars: opts.items [{label, value, color?}], opts.format(value) for the number shown. */
  function barChart(opts) {
    var items = opts.items || [];
    var width = opts.width || 360;
    var label = opts.label || "bar chart";
    if (!items.length) return empty(width, 60, label, opts.emptyText);
    var row = 24;
    var labelW = opts.labelWidth || 120;
    var valueW = 56;
    var height = items.length * row + 8;
    var max = Math.max.apply(null, items.map(function (i) { return i.value; }).concat([opts.max || 0, 1e-12]));
    var plotW = width - labelW - valueW - 8;
    var svg = frame(width, height, label);
    items.forEach(function (it, k) {
      var yy = 4 + k * row;
      var w = Math.max(0, (it.value / max) * plotW);
      svg.appendChild(svgEl("text", { x: labelW - 8, y: yy + 15, "text-anchor": "end", class: "chart-label" }, it.label));
      svg.appendChild(svgEl("rect", { x: labelW, y: yy + 3, width: plotW, height: row - 8, rx: 3, class: "chart-track" }));
      svg.appendChild(svgEl("rect", { x: labelW, y: yy + 3, width: w.toFixed(1), height: row - 8, rx: 3, fill: it.color || opts.color || "#2563eb" }));
      svg.appendChild(svgEl("text", { x: labelW + plotW + 8, y: yy + 15, class: "chart-value", "data-testid": it.testid }, opts.format ? opts.format(it.value) : String(it.value)));
    });
    return svg;
  }

  /* Grouped vertical bars of shares: opts.bins [names], opts.groups [{name, color, values: [0..1]}]. */
  function groupedBars(opts) {
    var bins = opts.bins || [];
    var groups = opts.groups || [];
    var width = opts.width || 420;
    var height = opts.height || 200;
    var label = opts.label || "grouped bars";
    if (!bins.length || !groups.length) return empty(width, height, label, opts.emptyText);
    var margin = { top: 10, right: 8, bottom: 44, left: 40 };
    var plotW = width - margin.left - margin.right;
    var plotH = height - margin.top - margin.bottom;
    var max = opts.max !== undefined ? opts.max : 1;
    var svg = frame(width, height, label);
    [0, 0.25, 0.5, 0.75, 1].forEach(function (f) {
      var yy = margin.top + plotH - f * plotH;
      svg.appendChild(svgEl("line", { x1: margin.left, x2: margin.left + plotW, y1: yy, y2: yy, class: "chart-grid" }));
      svg.appendChild(svgEl("text", { x: margin.left - 6, y: yy + 4, "text-anchor": "end", class: "chart-tick" }, (f * max).toFixed(2)));
    });
    var slot = plotW / bins.length;
    var barW = Math.min(26, (slot - 6) / groups.length);
    var rotate = bins.length > 6;
    bins.forEach(function (bin, b) {
      var gx = margin.left + b * slot + (slot - barW * groups.length) / 2;
      groups.forEach(function (g, k) {
        var v = g.values[b] === null || g.values[b] === undefined ? 0 : g.values[b];
        var h = Math.max(0, Math.min(1, v / max)) * plotH;
        var r = svgEl("rect", { x: (gx + k * barW).toFixed(1), y: (margin.top + plotH - h).toFixed(1), width: (barW - 2).toFixed(1), height: h.toFixed(1), rx: 2, fill: g.color });
        r.appendChild(svgEl("title", null, g.name + " · " + bin + ": " + (opts.format ? opts.format(v) : v)));
        svg.appendChild(r);
      });
      var lx = margin.left + b * slot + slot / 2;
      var ly = margin.top + plotH + 14;
      svg.appendChild(
        svgEl("text", rotate
          ? { x: lx, y: ly, "text-anchor": "end", transform: "rotate(-35 " + lx + " " + ly + ")", class: "chart-tick" }
          : { x: lx, y: ly, "text-anchor": "middle", class: "chart-label" }, bin)
      );
    });
    svg.appendChild(svgEl("line", { x1: margin.left, x2: margin.left + plotW, y1: margin.top + plotH, y2: margin.top + plotH, class: "chart-axis" }));
    var entries = groups.map(function (g) { return { name: g.name, color: g.color }; });
    var legendSvg = legend(svg, margin.left + plotW - 190, margin.top + 10, entries, 190);
    void legendSvg;
    return svg;
  }

  /* A stat tile: a caption, a big value and a small line under it. */
  function statTile(opts) {
    var tile = htmlEl("div", "tile" + (opts.tone ? " tile-" + opts.tone : ""));
    tile.appendChild(htmlEl("div", "tile-label", opts.label));
    var value = htmlEl("div", "tile-value", opts.value);
    if (opts.testid) value.setAttribute("data-testid", opts.testid);
    if (opts.raw !== undefined && opts.raw !== null) value.setAttribute("data-value", String(opts.raw));
    tile.appendChild(value);
    if (opts.sub) {
      var sub = htmlEl("div", "tile-sub", opts.sub);
      if (opts.subTestid) sub.setAttribute("data-testid", opts.subTestid);
      tile.appendChild(sub);
    }
    return tile;
  }

  window.CareCharts = { lineChart: lineChart, barChart: barChart, groupedBars: groupedBars, statTile: statTile, timeLabel: timeLabel };
})();
