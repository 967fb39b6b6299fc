// report.html's one script (inlined by report.html.j2): every table.data becomes sortable (click or
// Enter on a header; again to reverse) and, from FILTER_MIN_ROWS rows, filterable (a text box above it
// keeps the rows holding its text; a shorter table is read at a glance). It reorders and hides the
// page's own rows and writes no markup; without it the tables read as rendered.
(function () {
  "use strict";
  var FILTER_MIN_ROWS = 4;
  var MISSING = ["", "–", "not recorded"];  // shown for a missing value: sorted last either way
  var LEADING_NUMBER = /^(?:[<>≤≥]\s*)?([-−]?[\d,]*\.?\d+(?:e[-+]?\d+)?)/i;
  var collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

  function number(text) {
    var m = LEADING_NUMBER.exec(text);
    return m ? parseFloat(m[1].replace(/,/g, "").replace("−", "-")) : NaN;
  }

  function cellText(row, col) {
    var cell = row.cells[col];
    return cell ? cell.textContent.trim() : "";
  }

  function sortBy(table, rows, th, col) {
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var texts = rows.map(function (row) { return cellText(row, col); });
    var numeric = texts.every(function (t) { return MISSING.indexOf(t) >= 0 || !isNaN(number(t)); });
    var order = rows.map(function (row, i) { return i; });
    order.sort(function (a, b) {
      var ma = MISSING.indexOf(texts[a]) >= 0, mb = MISSING.indexOf(texts[b]) >= 0;
      if (ma || mb) return ma === mb ? a - b : (ma ? 1 : -1);
      var c = numeric ? number(texts[a]) - number(texts[b]) : collator.compare(texts[a], texts[b]);
      return (ascending ? c : -c) || a - b;
    });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    order.forEach(function (i) { body.appendChild(rows[i]); });
  }

  function addFilter(table, rows) {
    var box = document.createElement("p");
    box.className = "table-filter";
    var label = document.createElement("label");
    var input = document.createElement("input");
    input.type = "search";
    input.placeholder = "filter rows";
    input.setAttribute("aria-label", "filter the rows of the table below");
    var count = document.createElement("span");
    count.className = "muted";
    label.appendChild(input);
    box.appendChild(label);
    box.appendChild(count);
    input.addEventListener("input", function () {
      var words = input.value.toLowerCase().trim();
      var shown = 0;
      rows.forEach(function (row) {
        row.hidden = words !== "" && row.textContent.toLowerCase().indexOf(words) < 0;
        if (!row.hidden) shown += 1;
      });
      count.textContent = words === "" ? "" : " " + shown + " of " + rows.length + " rows";
    });
    table.parentNode.insertBefore(box, table);
  }

  document.querySelectorAll("table.data").forEach(function (table) {
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    table.classList.add("sortable");
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by this column (again to reverse)";
      th.addEventListener("click", function () { sortBy(table, rows, th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, rows, th, col); }
      });
    });
    if (rows.length >= FILTER_MIN_ROWS) addFilter(table, rows);
  });
})();
