(function(){
  var table=document.getElementById('experiments');
  function key(row,i,num){var c=row.cells[i];var v=c.hasAttribute('data-v')?c.getAttribute('data-v'):c.textContent;
    if(num){var n=parseFloat(v);return isNaN(n)?null:n;}return v.toLowerCase();}
  function sortBy(th){
    var heads=th.parentNode.children,i=Array.prototype.indexOf.call(heads,th),num=th.classList.contains('num');
    var dir=th.getAttribute('data-dir')==='asc'?'desc':'asc';
    for(var h=0;h<heads.length;h++){heads[h].removeAttribute('data-dir');heads[h].removeAttribute('aria-sort');}
    th.setAttribute('data-dir',dir);th.setAttribute('aria-sort',dir==='asc'?'ascending':'descending');
    var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=key(a,i,num),y=key(b,i,num);
      if(x===null||y===null){return x===y?0:(x===null?1:-1);}  /* blanks last, either way */
      var c=x<y?-1:(x>y?1:0);return dir==='asc'?c:-c;});
    rows.forEach(function(r){body.appendChild(r);});
  }
  var heads=table.tHead.rows[0].cells;
  for(var h=0;h<heads.length;h++){heads[h].addEventListener('click',function(){sortBy(this);});}
  /* report.html?sort=KEY[&dir=desc] opens sorted: the same click a reader would make */
  var q=new URLSearchParams(location.search),want=q.get('sort');
  for(var k=0;want&&k<heads.length;k++){if(heads[k].getAttribute('data-key')===want){
    heads[k].click();if(q.get('dir')==='desc'){heads[k].click();}}}
})();
