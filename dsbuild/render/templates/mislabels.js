(function(){
  var table = document.getElementById('issues'); if (!table) return;
  var tbody = table.tBodies[0];
  function key(td, num){
    var v = td.getAttribute('data-v'); if (v === null) v = td.textContent;
    if (!num) return v.toLowerCase();
    var f = parseFloat(v); return isNaN(f) ? null : f;
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, i){
    if (!th.hasAttribute('data-type')) return;
    th.addEventListener('click', function(){
      var asc = th.getAttribute('aria-sort') !== 'ascending', num = th.getAttribute('data-type') === 'num';
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function(h){ h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var rows = Array.prototype.slice.call(tbody.rows);
      rows.sort(function(a, b){
        var x = key(a.cells[i], num), y = key(b.cells[i], num);
        if (x === y) return 0; if (x === null) return 1; if (y === null) return -1;
        var c = num ? x - y : (x < y ? -1 : 1); return asc ? c : -c;
      });
      rows.forEach(function(r){ tbody.appendChild(r); });
    });
  });
  var filter = document.getElementById('filter'), kinds = document.querySelectorAll('input.kind'), shown = document.getElementById('shown');
  function apply(){
    var q = filter.value.toLowerCase(), on = {}, n = 0;
    Array.prototype.forEach.call(kinds, function(k){ on[k.value] = k.checked; });
    Array.prototype.forEach.call(tbody.rows, function(r){
      var vis = on[r.getAttribute('data-kind')] !== false && (!q || r.textContent.toLowerCase().indexOf(q) >= 0);
      r.hidden = !vis; if (vis) n++;
    });
    shown.textContent = n + ' shown';
  }
  filter.addEventListener('input', apply);
  Array.prototype.forEach.call(kinds, function(k){ k.addEventListener('change', apply); });
  function q(s){ s = String(s); return /[",;\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  var out = document.getElementById('decisions');
  function csv(){
    var lines = ['image_id,action,new_label,note'];
    Array.prototype.forEach.call(tbody.querySelectorAll('select.decision'), function(sel){
      if (!sel.value) return;
      var tr = sel.closest('tr'), label = sel.value === 'relabel' ? tr.getAttribute('data-suggested') : '';
      lines.push([q(tr.getAttribute('data-id')), sel.value, q(label), 'html report'].join(','));
    });
    out.value = lines.join('\n') + '\n';
    return lines.length - 1;
  }
  tbody.addEventListener('change', function(ev){ if (ev.target.classList.contains('decision')) csv(); });
  document.getElementById('download').addEventListener('click', function(){
    if (!csv()) { out.value = 'choose a decision in the last column first'; return; }
    var a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([out.value], {type: 'text/csv'}));
    a.download = 'decisions.csv'; document.body.appendChild(a); a.click(); a.remove();
  });
  apply();
})();
