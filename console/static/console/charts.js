// The console's charts (admin Positions > Charts), drawn with the vendored Chart.js from the
// JSON the page carries (json_script): no request of its own.
(function () {
  "use strict";
  function data(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }
  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (canvas) { canvas.chart = new Chart(canvas, config); }
  }
  var closes = data("chart-data");
  var equity = data("equity-data");
  var common = { responsive: true, maintainAspectRatio: false, animation: false };
  if (closes && closes.reasons.length) {
    draw("chart-pnl", {
      type: "line",
      data: { labels: closes.days, datasets: closes.reasons.map(function (r) {
        return { label: r.label, data: r.pnl, borderColor: r.colour, backgroundColor: r.colour, tension: 0, pointRadius: 2 };
      }) },
      options: Object.assign({}, common, { scales: { y: { title: { display: true, text: "realised P&L ($, cumulative)" } } } })
    });
    draw("chart-exits", {
      type: "bar",
      data: { labels: closes.days, datasets: closes.reasons.map(function (r) {
        return { label: r.label, data: r.exits, backgroundColor: r.colour };
      }) },
      options: Object.assign({}, common, { scales: { x: { stacked: true }, y: { stacked: true, ticks: { precision: 0 },
        title: { display: true, text: "positions closed" } } } })
    });
  }
  if (equity && equity.times.length) {
    draw("chart-equity", {
      type: "line",
      data: { labels: equity.times.map(function (t) { return t.slice(0, 16).replace("T", " "); }),
              datasets: [{ label: "equity ($)", data: equity.equity, borderColor: "#3465a4", backgroundColor: "#3465a4", pointRadius: 3, tension: 0 }] },
      options: common
    });
  }
})();
