// Plotly figures of the dashboard (plotly.js is loaded as the global `Plotly`).

const COLOR = { x: "#4cc9f0", z: "#f8961e", ok: "#3fb950", p99: "#f778ba", limit: "#da3633",
  muted: "#8b949e", fps: "#a371f7" };
const AXIS = { gridcolor: "#21262d", zerolinecolor: "#3d444d", linecolor: "#3d444d",
  automargin: true };
const CONFIG = { displaylogo: false, responsive: true, displayModeBar: false };

function layout(extra) {
  return {
    paper_bgcolor: "#161b22",
    plot_bgcolor: "#0d1117",
    font: { color: "#c9d1d9", size: 11, family: "DejaVu Sans, Arial, sans-serif" },
    margin: { l: 56, r: 16, t: 26, b: 36 },
    legend: { orientation: "h", x: 0, y: 1.0, yanchor: "bottom", font: { size: 10 },
      bgcolor: "rgba(0,0,0,0)" },
    uirevision: "keep", // keep the operator's zoom across updates
    hovermode: "x unified",
    ...extra,
    xaxis: { ...AXIS, ...(extra.xaxis || {}) },
    yaxis: { ...AXIS, ...(extra.yaxis || {}) },
  };
}

function line(name, color, extra = {}) {
  return { type: "scatter", mode: "lines", name, x: [], y: [], line: { color, width: 2 }, ...extra };
}

function dots(name, color, extra = {}) {
  return { type: "scatter", mode: "markers", name, x: [], y: [],
    marker: { color, size: 4, opacity: 0.55 }, ...extra };
}

function hline(y, color, text) {
  return {
    shape: { type: "line", xref: "paper", x0: 0, x1: 1, y0: y, y1: y,
      line: { color, width: 1.5, dash: "dash" } },
    annotation: { xref: "paper", x: 1, xanchor: "right", y, yanchor: "bottom", text,
      showarrow: false, font: { color, size: 10 } },
  };
}

function note(text) {
  return { xref: "paper", yref: "paper", x: 0.5, y: 0.5, text, showarrow: false,
    font: { color: COLOR.muted, size: 13 } };
}

const TIME_AXIS = { type: "date", tickformat: "%H:%M:%S" };

/** All dashboard figures; `render(view)` redraws them from the current data. */
export class Figures {
  constructor() {
    this.revision = 0;
    this.ids = ["plot-angle", "plot-time", "plot-correction", "plot-confidence",
      "plot-performance", "plot-model"];
    for (const id of this.ids) Plotly.newPlot(id, [], layout({}), CONFIG);
  }

  render(view) {
    this.revision += 1;
    const r = this.revision;
    const d = view.drift.cols;
    const driftTraces = (x) => [
      line("drift x (model)", COLOR.x, { x, y: d.drift_x_um }),
      line("drift z (model)", COLOR.z, { x, y: d.drift_z_um }),
      dots("residual x (image)", COLOR.x, { x, y: d.resid_x_um }),
      dots("residual z (image)", COLOR.z, { x, y: d.resid_z_um }),
    ];
    Plotly.react("plot-angle", driftTraces(d.angle_deg), layout({
      datarevision: r,
      xaxis: { title: { text: "rotation angle (°)" } },
      yaxis: { title: { text: "µm" } },
    }), CONFIG);
    Plotly.react("plot-time", driftTraces(d.t_ms), layout({
      datarevision: r, xaxis: TIME_AXIS, yaxis: { title: { text: "µm" } },
    }), CONFIG);

    const limits = view.limits;
    const corrLines = [];
    if (limits.maxTotal != null) {
      corrLines.push(hline(limits.maxTotal, COLOR.limit, `+max total ${limits.maxTotal} µm`));
      corrLines.push(hline(-limits.maxTotal, COLOR.limit, `−max total ${limits.maxTotal} µm`));
    }
    Plotly.react("plot-correction", [
      line("correction x", COLOR.x, { x: d.t_ms, y: d.correction_x_um, line: { color: COLOR.x, width: 2, shape: "hv" } }),
      line("correction z", COLOR.z, { x: d.t_ms, y: d.correction_z_um, line: { color: COLOR.z, width: 2, shape: "hv" } }),
    ], layout({
      datarevision: r, xaxis: TIME_AXIS, yaxis: { title: { text: "stage offset (µm)" } },
      shapes: corrLines.map((l) => l.shape),
      annotations: limits.maxTotal != null ? corrLines.map((l) => l.annotation)
        : [note("interlock limits not available")],
    }), CONFIG);

    const conf = [];
    if (limits.minConfidence != null) {
      conf.push(hline(limits.minConfidence, COLOR.limit, `min ${limits.minConfidence}`));
    }
    Plotly.react("plot-confidence", [
      line("confidence", COLOR.ok, { x: d.t_ms, y: d.confidence, mode: "lines+markers",
        marker: { size: 3 } }),
    ], layout({
      datarevision: r, xaxis: TIME_AXIS, yaxis: { range: [0, 1.05], title: { text: "confidence" } },
      shapes: conf.map((l) => l.shape), annotations: conf.map((l) => l.annotation),
      showlegend: false,
    }), CONFIG);

    const p = view.perf.cols;
    const e = view.process.cols;
    Plotly.react("plot-performance", [
      dots("processing (ms)", COLOR.muted, { x: e.t_ms, y: e.ms }),
      line("latency p50 (ms)", COLOR.ok, { x: p.t_ms, y: p.p50 }),
      line("latency p99 (ms)", COLOR.p99, { x: p.t_ms, y: p.p99 }),
      line("frame rate (fps)", COLOR.fps, { x: p.t_ms, y: p.fps, yaxis: "y2",
        line: { color: COLOR.fps, width: 2, dash: "dot" } }),
    ], layout({
      datarevision: r, xaxis: TIME_AXIS, yaxis: { title: { text: "ms" }, rangemode: "tozero" },
      yaxis2: { ...AXIS, title: { text: "fps" }, overlaying: "y", side: "right",
        rangemode: "tozero", showgrid: false, tickformat: ".0f" },
      margin: { l: 56, r: 48, t: 26, b: 36 },
    }), CONFIG);
  }

  /** Draw the runout model: harmonic curve per axis over 0-360° and fit residuals (right axis). */
  renderModel(state, message) {
    if (!state) {
      Plotly.react("plot-model", [], layout({ annotations: [note(message)],
        xaxis: { visible: false }, yaxis: { visible: false } }), CONFIG);
      return;
    }
    const angles = Array.from({ length: 361 }, (_, i) => i);
    const traces = [];
    for (const [axis, h] of Object.entries(state.harmonics || {})) {
      const y = angles.map((a) => {
        const t = (a * Math.PI) / 180;
        let v = h.offset_um || 0;
        h.cos_um.forEach((c, k) => { v += c * Math.cos((k + 1) * t) + h.sin_um[k] * Math.sin((k + 1) * t); });
        return v;
      });
      traces.push(line(`runout ${axis}`, COLOR[axis] || COLOR.muted, { x: angles, y }));
    }
    for (const [axis, res] of Object.entries(state.residuals || {})) {
      const rms = state.rms_residual_um?.[axis];
      const label = rms != null ? `residual ${axis} (rms ${(rms * 1000).toFixed(1)} nm)` : `residual ${axis}`;
      const nm = res.residual_um.map((v) => (v == null ? null : v * 1000));
      traces.push(dots(label, COLOR[axis] || COLOR.muted, { x: res.angle_deg, y: nm, yaxis: "y2",
        marker: { color: COLOR[axis] || COLOR.muted, size: 4, opacity: 0.7, symbol: "x" } }));
    }
    Plotly.react("plot-model", traces, layout({
      xaxis: { title: { text: "rotation angle (°)" }, range: [0, 360], dtick: 60 },
      yaxis: { title: { text: "runout (µm)" } },
      yaxis2: { ...AXIS, title: { text: "residual (nm)" }, overlaying: "y", side: "right", showgrid: false },
      margin: { l: 56, r: 56, t: 26, b: 36 },
      annotations: state.fitted ? [] : [note("model not fitted yet")],
    }), CONFIG);
  }
}
