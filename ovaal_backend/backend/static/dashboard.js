/* The OVAAL backend dashboard: renders /dashboard/data as one section per project, with inline SVG charts.
 * No library, no network beyond this backend: it works offline. Every figure a test or a person may want to find
 * carries data-field="<name of the /metrics key>"; every chart data-chart="<name>". */
(function () {
  'use strict';

  var SVG_NS = 'http://www.w3.org/2000/svg';
  var PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf',
    '#bcbd22', '#7f7f7f', '#393b79', '#ad494a', '#637939', '#8c6d31', '#843c39', '#7b4173', '#3182bd',
    '#e6550d', '#31a354', '#756bb1'];
  var IGNORE_COLOR = '#9a9a9a';
  var PHASE_TEXT = {
    'new': 'waiting for images and a start',
    'querying': 'collecting answers',
    'training': 'training the model',
    'publishing': 'sending query tasks and masks to Label Studio',
    'done': 'budget spent: final masks are in Label Studio'
  };

  var root = document.getElementById('projects');
  var statusLine = document.getElementById('status');
  var dataUrl = root.getAttribute('data-url');
  var lastData = null;
  var lastOk = null;
  var REQUEST_TIMEOUT_MS = 60000;  // a request never answered must not stop the refreshing for good

  // ------------------------------------------------------------------ small helpers

  function h(tag, attrs) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function s(tag, attrs) {
    var node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function setAttrs(node, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === 'text') node.textContent = String(value);
      else node.setAttribute(key, String(value));
    });
  }

  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { append(node, c); }); return; }
    node.appendChild(typeof child === 'object' ? child : document.createTextNode(String(child)));
  }

  function title(text) { return s('title', {text: text}); }

  function pad(n) { return (n < 10 ? '0' : '') + n; }

  function clock(t) {
    if (t === null || t === undefined) return '-';
    var d = new Date(t * 1000);
    var today = new Date();
    var time = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
    if (d.toDateString() === today.toDateString()) return time;
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + time;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return '-';
    seconds = Math.max(0, seconds);
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + ' s';
    if (seconds < 3600) return Math.floor(seconds / 60) + ' min ' + Math.round(seconds % 60) + ' s';
    return Math.floor(seconds / 3600) + ' h ' + Math.round((seconds % 3600) / 60) + ' min';
  }

  function percent(kept, asked) { return asked ? Math.round(100 * kept / asked) + ' %' : '-'; }

  function num(x, digits) {
    if (x === null || x === undefined || !isFinite(x)) return '-';
    return digits === undefined ? String(x) : Number(x).toFixed(digits);
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    var step = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 5, 10];  // five ticks of 0.2, 0.4 or 1 times a power of ten
    for (var i = 0; i < steps.length; i++) if (steps[i] * step >= value) return steps[i] * step;
    return 10 * step;
  }

  function classColors(project) {
    var colors = {};
    (project.classes || []).forEach(function (name, i) { colors[name] = PALETTE[i % PALETTE.length]; });
    var extra = (project.classes || []).length;
    Object.keys(project.class_clicks || {}).forEach(function (name) {
      if (!(name in colors)) colors[name] = PALETTE[(extra++) % PALETTE.length];
    });
    return function (name) {
      if (name === 'ignore' || name === project.ignore_label) return IGNORE_COLOR;
      if (!(name in colors)) colors[name] = PALETTE[(extra++) % PALETTE.length];
      return colors[name];
    };
  }

  // ------------------------------------------------------------------ charts (inline SVG)

  var W = 520, H = 220, M = {l: 46, r: 14, t: 14, b: 34};

  function frame(chart, attrs) {
    return s('svg', Object.assign({viewBox: '0 0 ' + W + ' ' + H, width: '100%', role: 'img',
      'data-chart': chart, 'class': 'chart'}, attrs || {}));
  }

  function yAxis(svgNode, max, label, format, ticks) {
    ticks = ticks || 5;
    for (var i = 0; i <= ticks; i++) {
      var v = max * i / ticks;
      var y = H - M.b - (H - M.t - M.b) * i / ticks;
      svgNode.appendChild(s('line', {x1: M.l, x2: W - M.r, y1: y, y2: y, 'class': i ? 'gridline' : 'axis'}));
      svgNode.appendChild(s('text', {x: M.l - 6, y: y + 4, 'class': 'tick', 'text-anchor': 'end',
        text: format ? format(v) : Number(v.toPrecision(3))}));
    }
    if (label) {
      svgNode.appendChild(s('text', {x: 12, y: M.t + (H - M.t - M.b) / 2, 'class': 'axis-label',
        transform: 'rotate(-90 12 ' + (M.t + (H - M.t - M.b) / 2) + ')', 'text-anchor': 'middle', text: label}));
    }
  }

  function xLabel(svgNode, text) {
    svgNode.appendChild(s('text', {x: M.l + (W - M.l - M.r) / 2, y: H - 4, 'class': 'axis-label',
      'text-anchor': 'middle', text: text}));
  }

  function empty(chart, text) {
    return h('div', {'class': 'empty', 'data-chart': chart}, text);
  }

  /* Labelled pixels per source image (sorted, most first) against the budget and what was asked so far. */
  function budgetChart(project) {
    var perImage = project.labelled_per_image || {};
    var ids = Object.keys(perImage);
    var budget = project.budget || {};
    if (!ids.length) return empty('budget', 'No source images listed yet.');
    ids.sort(function (a, b) { return perImage[b] - perImage[a] || Number(a) - Number(b); });
    var values = ids.map(function (id) { return perImage[id]; });
    var max = niceMax(Math.max(budget.per_image || 0, values[0] || 0));
    var svgNode = frame('budget', {'data-images': ids.length});
    yAxis(svgNode, max, 'labelled pixels');
    var plotW = W - M.l - M.r, plotH = H - M.t - M.b;
    var y = function (v) { return H - M.b - plotH * v / max; };
    var step = plotW / values.length;
    if (values.length <= 150) {
      values.forEach(function (v, i) {
        svgNode.appendChild(s('rect', {x: M.l + i * step + step * 0.12, y: y(v), width: Math.max(step * 0.76, 0.8),
          height: Math.max(H - M.b - y(v), 0), 'class': 'bar'},
          title('task ' + ids[i] + ': ' + v + ' labelled pixels')));
      });
    } else {
      var d = 'M' + M.l + ' ' + (H - M.b);
      values.forEach(function (v, i) { d += ' L' + (M.l + i * step) + ' ' + y(v) + ' L' + (M.l + (i + 1) * step) + ' ' + y(v); });
      d += ' L' + (W - M.r) + ' ' + (H - M.b) + ' Z';
      svgNode.appendChild(s('path', {d: d, 'class': 'area'}));
    }
    [[budget.per_image, 'budget ' + budget.per_image, 'ref-budget'],
      [budget.asked_per_image, 'asked so far ' + budget.asked_per_image, 'ref-asked']].forEach(function (ref) {
      if (ref[0] === undefined || ref[0] === null) return;
      svgNode.appendChild(s('line', {x1: M.l, x2: W - M.r, y1: y(ref[0]), y2: y(ref[0]), 'class': ref[2]}));
      svgNode.appendChild(s('text', {x: W - M.r - 2, y: y(ref[0]) - 4, 'text-anchor': 'end', 'class': 'ref-label ' + ref[2],
        text: ref[1]}));
    });
    xLabel(svgNode, ids.length + ' source images, most labelled first');
    var sorted = values.slice().sort(function (a, b) { return a - b; });
    var total = values.reduce(function (a, b) { return a + b; }, 0);
    return h('div', null, svgNode,
      h('p', {'class': 'note'}, 'min ' + sorted[0] + ' · median ' + sorted[Math.floor(sorted.length / 2)] + ' · max ' +
        sorted[sorted.length - 1] + ' labelled pixels per image; ' + total + ' of ' +
        (budget.per_image * ids.length) + ' budgeted (' + percent(total, budget.per_image * ids.length) + ')'));
  }

  /* Stored clicks per class: one horizontal bar each. */
  function clicksChart(project, color) {
    var counts = project.class_clicks || {};
    var names = (project.classes || []).filter(function (n) { return n in counts; });
    Object.keys(counts).forEach(function (n) { if (names.indexOf(n) < 0 && n !== project.ignore_label) names.push(n); });
    if (project.ignore_label in counts) names.push(project.ignore_label);  // classes in config order, ignore last
    if (!names.length) return empty('clicks', 'No classes yet.');
    var rowH = 18, labelW = 130, height = Math.max(names.length * rowH + 10, 40);
    var max = niceMax(Math.max.apply(null, names.map(function (n) { return counts[n]; }).concat([1])));
    var svgNode = s('svg', {viewBox: '0 0 ' + W + ' ' + height, width: '100%', 'class': 'chart', role: 'img',
      'data-chart': 'clicks', 'data-classes': names.length});
    var plotW = W - labelW - 60;
    names.forEach(function (name, i) {
      var y = 5 + i * rowH;
      var width = plotW * counts[name] / max;
      svgNode.appendChild(s('text', {x: labelW - 6, y: y + rowH * 0.7, 'text-anchor': 'end', 'class': 'tick', text: name}));
      svgNode.appendChild(s('rect', {x: labelW, y: y + 2, width: Math.max(width, counts[name] ? 1 : 0), height: rowH - 5,
        fill: color(name), 'data-class': name, 'data-count': counts[name]}, title(name + ': ' + counts[name] + ' clicks')));
      svgNode.appendChild(s('text', {x: labelW + width + 5, y: y + rowH * 0.7, 'class': 'tick', text: counts[name]}));
    });
    return svgNode;
  }

  /* Share of query points whose pre-label the annotator kept, per round: one line per class and one for all. */
  function qualityChart(project, color) {
    var quality = project.quality || {};
    var rounds = Object.keys(quality).map(Number).sort(function (a, b) { return a - b; });
    if (!rounds.length) return empty('quality', 'No answered query points yet.');
    var lastRound = Math.max(project.round || 0, rounds[rounds.length - 1]);
    var series = {};
    var all = [];
    rounds.forEach(function (r) {
      var kept = 0, asked = 0;
      Object.keys(quality[r]).forEach(function (name) {
        var cell = quality[r][name];
        (series[name] = series[name] || []).push({round: r, kept: cell.kept, asked: cell.asked});
        kept += cell.kept; asked += cell.asked;
      });
      all.push({round: r, kept: kept, asked: asked});
    });
    var svgNode = frame('quality', {'data-rounds': rounds.length});
    yAxis(svgNode, 100, 'pre-label kept', function (v) { return Math.round(v) + '%'; }, 4);
    var plotW = W - M.l - M.r, plotH = H - M.t - M.b;
    var span = Math.max(lastRound, 1);
    var x = function (r) { return M.l + 18 + (plotW - 36) * r / span; };
    var y = function (p) { return H - M.b - plotH * p; };
    for (var r = 0; r <= lastRound; r++) {
      svgNode.appendChild(s('text', {x: x(r), y: H - M.b + 14, 'text-anchor': 'middle', 'class': 'tick',
        text: r === 0 ? '0 (random)' : r}));
    }
    xLabel(svgNode, 'round');
    function draw(name, points, stroke, widthPx, cls) {
      var valid = points.filter(function (p) { return p.asked > 0; });
      if (valid.length > 1) {
        svgNode.appendChild(s('polyline', {points: valid.map(function (p) { return x(p.round) + ',' + y(p.kept / p.asked); }).join(' '),
          fill: 'none', stroke: stroke, 'stroke-width': widthPx, 'class': cls}));
      }
      valid.forEach(function (p) {
        svgNode.appendChild(s('circle', {cx: x(p.round), cy: y(p.kept / p.asked), r: cls === 'all' ? 5 : 3.5,
          fill: stroke, 'data-series': name, 'data-round': p.round, 'data-kept': p.kept, 'data-asked': p.asked},
          title('round ' + p.round + ' · ' + name + ': ' + p.kept + ' of ' + p.asked + ' kept (' +
            percent(p.kept, p.asked) + ')')));
      });
    }
    Object.keys(series).forEach(function (name) { draw(name, series[name], color(name), 1.5, 'class-line'); });
    draw('all', all, '#111', 3, 'all');
    var legend = h('div', {'class': 'legend'}, h('span', null, h('i', {style: 'background:#111'}), 'all classes'));
    Object.keys(series).forEach(function (name) {
      legend.appendChild(h('span', null, h('i', {style: 'background:' + color(name)}), name));
    });
    var table = h('table', {'class': 'small', 'data-table': 'quality'},
      h('tr', null, h('th', null, 'round'), h('th', null, 'kept'), h('th', null, 'asked'), h('th', null, 'share')),
      all.map(function (p) {
        return h('tr', null, h('td', null, p.round === 0 ? '0 (random)' : p.round), h('td', null, p.kept),
          h('td', null, p.asked), h('td', null, percent(p.kept, p.asked)));
      }));
    return h('div', null, svgNode, legend, table);
  }

  /* Loss and seconds per training, in the order they ran. */
  function trainingCharts(project) {
    var trainings = project.trainings || [];
    if (!trainings.length) return empty('trainings', 'No training yet.');
    var losses = trainings.map(function (t) { return t.loss; });
    var maxLoss = niceMax(Math.max.apply(null, losses.filter(isFinite).concat([0.001])));
    var maxSec = niceMax(Math.max.apply(null, trainings.map(function (t) { return t.seconds || 0; }).concat([0.1])));
    var plotW = W - M.l - M.r, plotH = H - M.t - M.b;
    var step = plotW / trainings.length;
    var cx = function (i) { return M.l + step * (i + 0.5); };
    var lossSvg = frame('loss', {'data-trainings': trainings.length});
    yAxis(lossSvg, maxLoss, 'last loss');
    var ly = function (t) { return H - M.b - plotH * t.loss / maxLoss; };
    var withLoss = trainings.map(function (t, i) { return {t: t, i: i}; }).filter(function (p) { return isFinite(p.t.loss); });
    if (withLoss.length > 1) {
      lossSvg.appendChild(s('polyline', {points: withLoss.map(function (p) { return cx(p.i) + ',' + ly(p.t); }).join(' '),
        'class': 'line'}));
    }
    withLoss.forEach(function (p) {
      lossSvg.appendChild(s('circle', {cx: cx(p.i), cy: ly(p.t), r: 4, 'class': 'dot'},
        title(p.t.version + ' (round ' + p.t.round + '): loss ' + num(p.t.loss, 4))));
    });
    var secSvg = frame('seconds', {'data-trainings': trainings.length});
    yAxis(secSvg, maxSec, 'seconds');
    trainings.forEach(function (t, i) {
      var height = plotH * (t.seconds || 0) / maxSec;
      secSvg.appendChild(s('rect', {x: cx(i) - step * 0.3, y: H - M.b - height, width: step * 0.6, height: height,
        'class': t.final ? 'bar final' : 'bar'}, title(t.version + ': ' + duration(t.seconds))));
    });
    [lossSvg, secSvg].forEach(function (svgNode) {
      trainings.forEach(function (t, i) {
        svgNode.appendChild(s('text', {x: cx(i), y: H - M.b + 14, 'text-anchor': 'middle', 'class': 'tick',
          text: t.version}));
      });
    });
    var table = h('table', {'class': 'small', 'data-table': 'trainings'},
      h('tr', null, ['version', 'round', 'images', 'points', 'corrected masks', 'loss', 'time', 'finished'].map(function (c) {
        return h('th', null, c);
      })),
      trainings.map(function (t) {
        return h('tr', null, h('td', null, t.version + (t.final ? ' (final' + (t.semi ? ', OVAAL+' : '') + ')' : '')),
          h('td', null, t.round), h('td', null, t.images), h('td', null, t.points),
          h('td', null, t.dense_images === undefined ? '-' : t.dense_images), h('td', null, num(t.loss, 4)),
          h('td', null, duration(t.seconds)), h('td', null, clock(t.finished_at)));
      }));
    return h('div', null, h('div', {'class': 'pair'}, lossSvg, secSvg), table);
  }

  /* One row per round: answers collected (from the round's opening to its last answer), then its training. */
  function timelineChart(project, now) {
    var timeline = project.timeline || [];
    var trainings = project.trainings || [];
    if (!timeline.length) return empty('timeline', 'No round yet.');
    var rows = timeline.map(function (r) {
      var training = null;
      trainings.forEach(function (t) { if (t.round === r.round && t.finished_at) training = t; });
      var start = r.opened || r.first_answer;
      var open = r.round === project.round && project.phase === 'querying';
      var end = open ? now : (r.last_answer || start);
      return {round: r.round, start: start, end: end, open: open, training: training, info: r};
    });
    var times = [];
    rows.forEach(function (r) {
      if (r.start) times.push(r.start);
      if (r.end) times.push(r.end);
      if (r.training) times.push(r.training.finished_at - (r.training.seconds || 0), r.training.finished_at);
    });
    var rowH = 24, top = 8, labelW = 64, height = top + rows.length * rowH + 30;
    var svgNode = s('svg', {viewBox: '0 0 ' + W + ' ' + height, width: '100%', 'class': 'chart', role: 'img',
      'data-chart': 'timeline', 'data-rounds': rows.length});
    if (!times.length) {
      return h('div', null, empty('timeline', 'No answers or trainings yet: the timeline starts with the first answer.'));
    }
    var t0 = Math.min.apply(null, times), t1 = Math.max.apply(null, times.concat([t0 + 1]));
    var plotW = W - labelW - M.r;
    var x = function (t) { return labelW + plotW * (t - t0) / (t1 - t0); };
    rows.forEach(function (r, i) {
      var y = top + i * rowH;
      svgNode.appendChild(s('text', {x: labelW - 6, y: y + rowH * 0.65, 'text-anchor': 'end', 'class': 'tick',
        text: 'round ' + r.round}));
      if (r.start && r.end) {
        svgNode.appendChild(s('rect', {x: x(r.start), y: y + 4, width: Math.max(x(r.end) - x(r.start), 2),
          height: rowH - 8, 'class': r.open ? 'span-open' : 'span'},
          title('round ' + r.round + ': ' + r.info.annotations + ' annotations of ' + r.info.query_tasks +
            ' query tasks, ' + clock(r.start) + ' to ' + (r.open ? 'now' : clock(r.end)))));
      }
      if (r.training) {
        var ts = r.training.finished_at - (r.training.seconds || 0);
        svgNode.appendChild(s('rect', {x: x(ts), y: y + 2, width: Math.max(x(r.training.finished_at) - x(ts), 3),
          height: rowH - 4, 'class': 'span-train'},
          title(r.training.version + ' trained ' + duration(r.training.seconds) + ', finished ' +
            clock(r.training.finished_at))));
      }
    });
    var axisY = top + rows.length * rowH + 4;
    svgNode.appendChild(s('line', {x1: labelW, x2: W - M.r, y1: axisY, y2: axisY, 'class': 'axis'}));
    for (var k = 0; k <= 3; k++) {
      var t = t0 + (t1 - t0) * k / 3;
      svgNode.appendChild(s('text', {x: x(t), y: axisY + 14, 'text-anchor': k === 0 ? 'start' : k === 3 ? 'end' : 'middle',
        'class': 'tick', text: clock(t)}));
    }
    var legend = h('div', {'class': 'legend'},
      h('span', null, h('i', {'class': 'span'}), 'answers collected'),
      h('span', null, h('i', {'class': 'span-open'}), 'open round'),
      h('span', null, h('i', {'class': 'span-train'}), 'training'));
    return h('div', null, svgNode, legend);
  }

  /* Corrected masks (brush annotations on source tasks): the pushed mask measured against each, per class and per
   * pushed version, beside the share of its pixels the annotator kept. */
  function correctionsBlock(project, color) {
    var c = project.corrections || {count: 0};
    var box = h('div', {'data-field': 'corrections', 'data-count': c.count || 0, 'data-measured': c.measured || 0,
      'data-mean-miou': c.mean_miou === null || c.mean_miou === undefined ? '' : c.mean_miou,
      'data-mean-kept': c.mean_kept === null || c.mean_kept === undefined ? '' : c.mean_kept});
    if (!c.count) {
      box.appendChild(empty('corrections', 'No corrected mask yet: submit a source task\'s mask (accepted as it ' +
        'is or corrected) in Label Studio.'));
      return box;
    }
    box.appendChild(h('div', {'class': 'counts'},
      h('span', null, 'corrected images ', h('b', null, c.count)),
      h('span', null, 'measured ', h('b', null, c.measured)),
      h('span', null, 'mean IoU ', h('b', {'data-field': 'corrections_mean_miou'}, num(c.mean_miou, 1) +
        (c.mean_miou === null || c.mean_miou === undefined ? '' : ' %'))),
      h('span', null, 'pre-label kept ', h('b', {'data-field': 'corrections_mean_kept'},
        c.mean_kept === null || c.mean_kept === undefined ? '-' : num(100 * c.mean_kept, 1) + ' %'))));
    var perClass = c.per_class_iou || {};
    var names = (project.classes || []).filter(function (n) { return n in perClass; });  // config order first
    Object.keys(perClass).forEach(function (n) { if (names.indexOf(n) < 0) names.push(n); });
    names = names.filter(function (n) { return perClass[n] !== null && perClass[n] !== undefined; });
    if (names.length) {
      var rowH = 18, labelW = 130, height = names.length * rowH + 10, plotW = W - labelW - 60;
      var svgNode = s('svg', {viewBox: '0 0 ' + W + ' ' + height, width: '100%', 'class': 'chart', role: 'img',
        style: 'max-width:' + W + 'px', 'data-chart': 'correction-iou', 'data-classes': names.length});
      names.forEach(function (name, i) {
        var y = 5 + i * rowH, v = perClass[name], width = plotW * v / 100;
        svgNode.appendChild(s('text', {x: labelW - 6, y: y + rowH * 0.7, 'text-anchor': 'end', 'class': 'tick', text: name}));
        svgNode.appendChild(s('rect', {x: labelW, y: y + 2, width: Math.max(width, 1), height: rowH - 5, fill: color(name),
          'data-class': name, 'data-iou': v}, title(name + ': mean IoU ' + num(v, 1) + ' %')));
        svgNode.appendChild(s('text', {x: labelW + width + 5, y: y + rowH * 0.7, 'class': 'tick', text: num(v, 1) + ' %'}));
      });
      box.appendChild(svgNode);
    }
    box.appendChild(h('table', {'class': 'small', 'data-table': 'corrections-by-version'},
      h('tr', null, ['pushed version', 'corrected', 'mean IoU', 'pre-label kept'].map(function (t) { return h('th', null, t); })),
      (c.by_version || []).map(function (v) {
        return h('tr', null, h('td', null, v.version), h('td', null, v.count), h('td', null, num(v.mean_miou, 1) + ' %'),
          h('td', null, v.mean_kept === null ? '-' : num(100 * v.mean_kept, 1) + ' %'));
      })));
    box.appendChild(h('table', {'class': 'small', 'data-table': 'corrections-recent'},
      h('tr', null, ['task', 'pushed version', 'IoU', 'kept', 'stored'].map(function (t) { return h('th', null, t); })),
      (c.recent || []).map(function (r) {
        return h('tr', null, h('td', null, r.task), h('td', null, r.version || '(no mask of ours)'),
          h('td', null, num(r.miou, 1)), h('td', null, r.kept === null || r.kept === undefined ? '-' :
            num(100 * r.kept, 1) + ' %'), h('td', null, clock(r.at)));
      })));
    return box;
  }

  function quarantineBlock(project) {
    var q = project.quarantined || {events: [], images: []};
    var events = q.events || [], images = q.images || [];
    var failed = project.failed_job || {};
    var box = h('div', {'data-field': 'quarantined', 'data-events': events.length, 'data-images': images.length,
      'data-failed-job': failed.job ? 1 : 0});
    if (failed.job) {
      box.appendChild(h('p', {'class': 'reason'}, 'Round job ' + failed.job + ' (round ' + failed.round +
        ') failed on every retry: ' + failed.reason + '. The project waits; after the fix run ' +
        'python -m ovaal_backend requeue --project <id>.'));
    }
    if (!events.length && !images.length) {
      box.appendChild(h('p', {'class': 'ok'}, 'Nothing quarantined.'));
      return box;
    }
    if (events.length) {
      box.appendChild(h('table', {'class': 'small'},
        h('tr', null, h('th', null, 'event'), h('th', null, 'action'), h('th', null, 'since'), h('th', null, 'reason')),
        events.map(function (e) {
          return h('tr', null, h('td', null, e.id), h('td', null, e.action), h('td', null, clock(e.at)),
            h('td', {'class': 'reason'}, e.error));
        })));
    }
    if (images.length) {
      box.appendChild(h('table', {'class': 'small'},
        h('tr', null, h('th', null, 'image task'), h('th', null, 'since'), h('th', null, 'reason')),
        images.map(function (i) {
          return h('tr', null, h('td', null, i.item), h('td', null, clock(i.at)), h('td', {'class': 'reason'}, i.reason));
        })));
    }
    box.appendChild(h('p', {'class': 'note'}, 'python -m ovaal_backend quarantine --project <id> lists them; ' +
      '--release retries the events.'));
    return box;
  }

  // ------------------------------------------------------------------ one project

  function fact(label, field, value, extra) {
    return h('div', {'class': 'fact'}, h('span', {'class': 'label'}, label),
      h('span', {'class': 'value', 'data-field': field}, value), extra || null);
  }

  function card(titleText, help, body, wide) {
    return h('section', {'class': 'card' + (wide ? ' wide' : '')}, h('h3', null, titleText),
      help ? h('p', {'class': 'help'}, help) : null, body);
  }

  function renderProject(id, project, data) {
    var color = classColors(project);
    var now = data.server_time || Date.now() / 1000;
    var worker = project.worker || {};
    var since = (data.workers || {})[id] || {};
    var doing = worker.busy_with ? worker.busy_with : (worker.alive === false ? 'stopped' : 'idle');
    var approx = {stored: '≈ ', first: '≤ '}[since.how] || '';
    var workerText = doing + ' since ' + approx + clock(since.since) + ' (' + duration(now - since.since) + ')';
    var phaseSince = project.phase_since ? ' since ' + clock(project.phase_since) : '';
    var answered = project.answered_query_tasks || 0, tasks = project.query_tasks || 0;
    var header = h('div', {'class': 'facts'},
      fact('phase', 'phase', project.phase, h('span', {'class': 'sub'}, (PHASE_TEXT[project.phase] || '') + phaseSince)),
      fact('round', 'round', project.round, h('span', {'class': 'sub'}, 'of ' + project.rounds + ' (0 = random start)')),
      fact('model version', 'model_version', project.model_version,
        h('span', {'class': 'sub'}, 'generation ' + project.generation)),
      fact('device', 'device', project.device || '-'),
      fact('worker', 'worker', workerText, worker.last_error ? h('span', {'class': 'error'}, worker.last_error) : null),
      fact('answered query tasks', 'answered_query_tasks', answered,
        h('span', {'class': 'sub'}, h('span', null, 'of '), h('span', {'data-field': 'query_tasks'}, tasks),
          ' in round ' + project.round),
        h('div', {'class': 'progress'}, h('div', {style: 'width:' + (tasks ? 100 * answered / tasks : 0) + '%'}))));
    var counts = h('div', {'class': 'counts'},
      ['annotations', 'cancelled', 'points', 'ignored_points', 'new_annotations', 'pending_events'].map(function (k) {
        return h('span', null, k.replace('_', ' ') + ' ', h('b', {'data-field': k}, project[k]));
      }));
    var budget = project.budget || {};
    var grid = h('div', {'class': 'grid'},
      card('Budget: labelled pixels per image',
        'Budget per image = INIT_PIXELS + ROUNDS × PIXELS_PER_ROUND = ' + budget.init_pixels + ' + ' + project.rounds +
        ' × ' + budget.pixels_per_round + ' = ' + budget.per_image + '.', budgetChart(project)),
      card('Stored clicks per class', 'Each image pixel once, newest answer wins; "ignore" = can\'t tell.',
        clicksChart(project, color)),
      card('Pre-label kept (no ground truth needed)',
        'Per round, the share of answered query points whose pre-label (the model\'s guess) the annotator kept; ' +
        'round 0\'s random points are pre-labelled "ignore" (no model yet). Queries are the model\'s most uncertain ' +
        'pixels: a pessimistic figure, not its pixel accuracy.', qualityChart(project, color)),
      card('Round timeline', 'When each round\'s answers came in, and its training.', timelineChart(project, now)),
      card('Corrected masks (ground truth)', 'A submitted brush annotation on a source task is the truth for that ' +
        'image. Per class, the IoU of the mask the backend had pushed against it (mean over the corrected images; ' +
        'pixels the correction leaves without a class are not counted), and the share of its pixels the annotator ' +
        'kept as pushed.', correctionsBlock(project, color), true),
      card('Trainings', 'Last loss and duration of each training (final: the OVAAL+ phase included).',
        trainingCharts(project), true),
      card('Quarantined and failing', 'Events that could not be applied, images that cannot be read, and a round ' +
        'job that failed for good, with their reason.',
        quarantineBlock(project), true));
    return h('article', {'class': 'project', 'data-project': id},
      h('h2', null, 'Project ' + id, h('span', {'class': 'phase phase-' + project.phase}, project.phase)),
      header, counts, grid);
  }

  // ------------------------------------------------------------------ the page

  // Whether the backend reaches Label Studio with its URL and key: the newest outcome of its calls (link.py).
  function linkLine(link) {
    if (!link) return [];
    var text, cls;
    if (link.reachable === false) {
      cls = 'error';
      text = 'Label Studio at ' + link.url + ' NOT reachable since ' + clock(link.last_error_at) + ': ' +
        link.last_error + ' · last successful call: ' + clock(link.last_ok);
    } else if (link.reachable) {
      cls = 'ok';
      text = 'Label Studio at ' + link.url + ' reachable · last successful call ' + clock(link.last_ok) +
        (link.last_error ? ' · last error (' + clock(link.last_error_at) + '): ' + link.last_error : '');
    } else {
      cls = 'muted';
      text = 'Label Studio at ' + link.url + ': not called yet';
    }
    return [h('p', {'class': cls, 'data-field': 'label_studio', 'data-reachable': String(link.reachable)}, text)];
  }

  function render(data) {
    lastData = data;
    var ids = Object.keys(data.projects || {}).sort(function (a, b) { return Number(a) - Number(b); });
    var nodes = ids.map(function (id) { return renderProject(id, data.projects[id], data); });
    if (!nodes.length) {
      nodes = [h('p', {'class': 'muted'}, 'No project yet: connect this backend to a Label Studio project ' +
        '(Settings > Model).')];
    }
    nodes = linkLine(data.label_studio).concat(nodes);
    root.replaceChildren.apply(root, nodes);
    root.setAttribute('data-rendered', String(ids.length));
    lastOk = Date.now();
    statusLine.className = 'muted';
    statusLine.textContent = data.model_class + ' ' + data.version + ' · updated ' + clock(data.server_time) +
      ' · refreshes every ' + (data.refresh_seconds || 5) + ' s';
  }

  // One request at a time: the next one is scheduled only once the last has been answered (or has failed or
  // timed out), refresh_seconds after that. A fixed interval piled requests up on a busy backend: every open
  // page kept adding one while the last ones were still being computed.
  function refreshEvery() { return ((lastData && lastData.refresh_seconds) || 5) * 1000; }

  function refresh() {
    var aborter = typeof AbortController === 'function' ? new AbortController() : null;
    var timer = aborter ? setTimeout(function () { aborter.abort(); }, REQUEST_TIMEOUT_MS) : null;
    fetch(dataUrl, {credentials: 'same-origin', cache: 'no-store', signal: aborter ? aborter.signal : undefined})
      .then(function (response) {
        if (!response.ok) throw new Error('HTTP ' + response.status);
        return response.json();
      }).then(render).catch(function (err) {
        statusLine.className = 'error';
        statusLine.textContent = 'refresh failed (' + (err.name === 'AbortError' ? 'no answer in ' +
          REQUEST_TIMEOUT_MS / 1000 + ' s' : err.message) + '); showing data of ' +
          clock(lastData ? lastData.server_time : null);
      }).then(function () {
        clearTimeout(timer);
        setTimeout(refresh, refreshEvery());
      });
  }

  try {
    render(JSON.parse(document.getElementById('initial-data').textContent));
  } catch (err) {
    statusLine.className = 'error';
    statusLine.textContent = 'cannot show the data: ' + err.message;
  }
  setTimeout(refresh, refreshEvery());
})();
