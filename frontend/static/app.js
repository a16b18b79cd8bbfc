/* ChangeCast pages: the few things htmx does not do by itself.
 *
 * - resume: every (re)connection of the live socket carries the last seq the page applied
 *   (#cc-seq, advanced by the server's own fragments), the admin's status filter and the
 *   product search;
 * - the connection indicator: connecting / live / degraded (the database does not answer:
 *   last known data, actions paused) / reconnecting / offline (the browser says so);
 * - changed values flash (a static outline with prefers-reduced-motion);
 * - the cc-live extension: upsert and if-present swaps (see backend/fragments.py);
 * - toasts for errors and notifications; the order-trend chart (uPlot).
 */
(function () {
  'use strict'

  // ---- reconnect fast, with jitter, capped ---------------------------------------------------
  htmx.config.wsReconnectDelay = function (retry) {
    var ceiling = Math.min(5000, 250 * Math.pow(2, retry))
    return ceiling / 2 + Math.random() * ceiling / 2
  }

  htmx.createWebSocket = function (url) {
    var target = new URL(url)
    var marker = document.getElementById('cc-seq')
    if (marker && marker.dataset.seq) target.searchParams.set('resume_from', marker.dataset.seq)
    var filter = document.getElementById('status-filter')
    if (filter && filter.value) target.searchParams.set('status', filter.value)
    var search = document.querySelector('form.search')
    if (search) {
      var q = search.querySelector('[name=q]').value
      var category = search.querySelector('[name=category]').value
      if (q) target.searchParams.set('q', q)
      if (category) target.searchParams.set('category', category)
    }
    // One id per tab: a tab that reconnects is the same presence, not a second one.
    var tab = sessionStorage.getItem('ccTab')
    if (!tab) {
      tab = Math.random().toString(36).slice(2, 12) + Date.now().toString(36)
      sessionStorage.setItem('ccTab', tab)
    }
    target.searchParams.set('tab', tab)
    var socket = new WebSocket(target.toString())
    socket.binaryType = htmx.config.wsBinaryType
    watch(socket)
    return socket
  }

  // ---- a silent socket is a dead one ----------------------------------------------------------
  // The server sends something at least every heartbeat (data-heartbeat-ms); a network that
  // died without closing the socket leaves the browser believing it is open for minutes. After
  // three heartbeats of silence the socket is dropped and the extension reconnects (and the
  // page resumes from its last seq), as after any abnormal close (1006).
  var watched = null
  var lastHeard = 0

  function watch (socket) {
    watched = socket
    lastHeard = Date.now()
    socket.addEventListener('message', function () { lastHeard = Date.now() })
    socket.addEventListener('open', function () { lastHeard = Date.now() })
  }

  setInterval(function () {
    var main = document.querySelector('[data-heartbeat-ms]')
    var socket = watched
    if (!main || !socket || socket.readyState !== WebSocket.OPEN) return
    var limit = Math.max(3 * Number(main.dataset.heartbeatMs || 15000), 2000)
    if (Date.now() - lastHeard <= limit) return
    var onclose = socket.onclose
    socket.onclose = null
    socket.onmessage = null
    watched = null
    try { socket.close(4000, 'no heartbeat') } catch (e) {}
    if (onclose) onclose.call(socket, new CloseEvent('close', { code: 1006, reason: 'no heartbeat' }))
  }, 500)

  // ---- connection indicator ------------------------------------------------------------------
  var RETRIED = [1006, 1011, 1012, 1013]
  var everOpen = false

  function setConnection (state, text) {
    var conn = document.getElementById('conn')
    if (!conn) return
    conn.dataset.state = state
    conn.querySelector('.conn-label').textContent = text
    document.body.dataset.connection = state
  }

  function databaseDown () {
    var status = document.getElementById('db-status')
    return !!status && status.dataset.db === 'down'
  }

  function showLive () {
    if (!navigator.onLine) setConnection('offline', 'Offline')
    else if (databaseDown()) setConnection('degraded', 'Degraded: showing last known data')
    else setConnection('connected', 'Live')
  }

  document.addEventListener('htmx:wsConnecting', function () {
    if (!navigator.onLine) setConnection('offline', 'Offline')
    else if (everOpen) setConnection('reconnecting', 'Reconnecting…')
  })
  var liveSocket = null
  document.addEventListener('htmx:wsOpen', function (evt) {
    everOpen = true
    liveSocket = evt.detail.socketWrapper
    showLive()
    tellViewing(true) // after a reconnect too: the server forgot with the old socket
  })

  // ---- presence: which order this console shows, and who else is here ---------------------------
  var told // the order this console last said it shows
  function tellViewing (force) {
    if (!liveSocket || document.body.dataset.view !== 'admin') return
    var detail = document.querySelector('#order-detail[data-order-id]')
    var viewing = detail ? detail.dataset.orderId : null
    if (viewing === told && !force) return
    told = viewing
    liveSocket.send(JSON.stringify({ viewing: viewing }))
  }
  document.addEventListener('htmx:afterSettle', function () { tellViewing(false) })

  function markMe () {
    var me = document.body.dataset.userId
    document.querySelectorAll('.person[data-user-id]').forEach(function (el) {
      var mine = el.dataset.userId === me
      if (el.closest('.presence-viewers')) el.hidden = mine // "who else"
      else el.classList.toggle('me', mine)
    })
  }
  document.addEventListener('DOMContentLoaded', markMe)
  document.addEventListener('htmx:afterSettle', markMe)
  // The browser knows first when the network is gone: say so at once, not after three
  // missed heartbeats (the socket, if it survives, goes on delivering meanwhile).
  window.addEventListener('offline', function () { setConnection('offline', 'Offline') })
  window.addEventListener('online', function () {
    if (watched && watched.readyState === WebSocket.OPEN) showLive()
    else setConnection('reconnecting', 'Reconnecting…')
  })

  // ---- the database's reachability, as the server tells it (#db-status) -----------------------
  var PAUSED = 'Paused: the database is unreachable'
  var ACTIONS = '[hx-post], form[hx-post] button, form[hx-post] input'

  function applyDatabase () {
    var down = databaseDown()
    document.body.dataset.db = down ? 'down' : 'up'
    var banner = document.getElementById('degraded')
    if (banner) banner.hidden = !down
    if (down) {
      document.querySelectorAll(ACTIONS).forEach(function (el) {
        if (el.disabled || el.tagName === 'FORM') return
        el.disabled = true
        el.dataset.dbPaused = el.getAttribute('title') || ''
        el.setAttribute('title', PAUSED)
        el.setAttribute('aria-describedby', 'degraded')
      })
    } else {
      document.querySelectorAll('[data-db-paused]').forEach(function (el) {
        el.disabled = false
        if (el.dataset.dbPaused) el.setAttribute('title', el.dataset.dbPaused)
        else el.removeAttribute('title')
        el.removeAttribute('aria-describedby')
        delete el.dataset.dbPaused
      })
    }
    var conn = document.getElementById('conn')
    if (conn && ['connected', 'degraded'].indexOf(conn.dataset.state) >= 0) showLive()
  }

  // ---- changed values flash -------------------------------------------------------------------
  // Before each out-of-band swap the text of the target and of its parts (by id) is noted;
  // after it, the innermost parts whose text differs (or that are new) are highlighted.
  var QUIET = { 'cc-seq': 1, 'db-status': 1, toasts: 1 }
  var CONTAINER = 'ol:not(.rank), ul, [role=rowgroup], .grid'
  var noted = null

  function textOf (el) { return el.textContent.replace(/\s+/g, ' ').trim() }

  function flash (el) {
    el.classList.remove('cc-flash')
    void el.offsetWidth // restart the animation
    el.classList.add('cc-flash')
    setTimeout(function () { el.classList.remove('cc-flash') }, 1700)
  }

  document.addEventListener('htmx:oobBeforeSwap', function (evt) {
    var target = evt.detail.target
    if (!target || !target.id || QUIET[target.id] || target.closest('#toasts')) return
    noted = noted || {}
    noted[target.id] = textOf(target)
    target.querySelectorAll('[id]').forEach(function (el) { noted[el.id] = textOf(el) })
  })
  document.addEventListener('htmx:oobAfterSwap', function (evt) {
    var el = evt.target
    if (el && el.id === 'db-status') applyDatabase()
    if (!noted || !(el instanceof Element) || !document.body.contains(el)) return
    // The event also fires on the socket's own element (htmx settles it too): only what
    // was swapped counts, that is what was noted, and what arrived inside it.
    var parts = [el].concat(Array.prototype.slice.call(el.querySelectorAll('[id]')))
    var changed = parts.filter(function (part) {
      if (!part.id || QUIET[part.id] || part.hidden || part.closest('[data-quiet]')) return false
      if (part.id in noted) return noted[part.id] !== textOf(part)
      var holder = part.parentElement && part.parentElement.closest('[id]')
      return !!holder && holder.id in noted // new in a swapped container
    })
    changed.forEach(function (part) {
      var inner = changed.some(function (other) { return other !== part && part.contains(other) })
      if (!inner && !part.matches(CONTAINER) && toFlash.indexOf(part) < 0) toFlash.push(part)
    })
  })
  // After the settle: htmx's settling puts an element's own attributes (its class) back.
  var toFlash = []
  function flashChanged () {
    var parts = toFlash
    toFlash = []
    noted = null
    parts.forEach(function (part) { if (document.body.contains(part)) flash(part) })
  }
  document.addEventListener('htmx:wsClose', function (evt) {
    var code = evt.detail.event && evt.detail.event.code
    if (RETRIED.indexOf(code) >= 0) {
      setConnection(navigator.onLine ? 'reconnecting' : 'offline',
        navigator.onLine ? 'Reconnecting…' : 'Offline')
    } else {
      var reason = (evt.detail.event && evt.detail.event.reason) || 'closed'
      setConnection('offline', 'Disconnected: ' + reason)
    }
  })

  // ---- cc-live: upsert and if-present swaps --------------------------------------------------
  var pendingRefresh = null

  htmx.defineExtension('cc-live', {
    transformResponse: function (text) {
      var template = document.createElement('template')
      template.innerHTML = text
      var detail = document.getElementById('order-detail')
      var watched = detail && detail.dataset.row
      Array.prototype.slice.call(template.content.children).forEach(function (el) {
        var present = el.id ? document.getElementById(el.id) : null
        countOrders(el, present)
        if (el.hasAttribute('data-if-present') && !present) {
          el.remove()
          return
        }
        if (watched && el.id === watched) pendingRefresh = detail
        var upsert = el.getAttribute('data-upsert')
        if (!upsert) return
        el.removeAttribute('data-upsert')
        if (present) {
          el.setAttribute('hx-swap-oob', 'true')
          return
        }
        var wrapper = document.createElement(el.tagName === 'LI' ? 'ul' : 'div')
        wrapper.setAttribute('hx-swap-oob', upsert)
        el.replaceWith(wrapper)
        wrapper.appendChild(el)
      })
      return template.innerHTML
    }
  })

  document.addEventListener('htmx:wsAfterMessage', function () {
    flashChanged()
    markMe()
    if (databaseDown()) applyDatabase() // controls that just arrived are paused too
    if (pendingRefresh && document.body.contains(pendingRefresh)) {
      htmx.trigger(pendingRefresh, 'cc:refresh')
    }
    pendingRefresh = null
    trimRows('orders-body', 100)
    trimRows('notifications', 30)
    showCount()
    updateTrend()
  })

  function trimRows (id, keep) {
    var list = document.getElementById(id)
    if (list && list.dataset.keep) keep = Math.max(keep, Number(list.dataset.keep))
    while (list && list.children.length > keep) list.lastElementChild.remove()
  }

  // ---- the admin's orders table: "Showing 50 of N", and more on demand ---------------------------
  // N is counted at render and kept by the live changes: an order entering the table (new,
  // or now matching the filter) adds one, one leaving it takes one away, whether or not
  // its row is loaded. "Load 50 more" asks for the rows older than the last one shown.
  function countOrders (el, present) {
    var count = document.getElementById('orders-count')
    if (!count || !el.id || el.id.indexOf('order-') !== 0) return
    var delta = 0
    if (el.getAttribute('data-upsert') === 'afterbegin:#orders-body' && !present) delta = 1
    else if (el.getAttribute('hx-swap-oob') === 'delete') delta = -1
    if (delta) count.dataset.total = Math.max(0, Number(count.dataset.total) + delta)
  }

  function showCount () {
    var count = document.getElementById('orders-count')
    var body = document.getElementById('orders-body')
    if (!count || !body) return
    var shown = body.children.length
    var total = Math.max(Number(count.dataset.total), shown)
    count.querySelector('.shown').textContent = shown
    count.querySelector('.total').textContent = total
    var more = document.getElementById('orders-more')
    if (more) more.hidden = shown >= total
  }

  document.addEventListener('htmx:configRequest', function (evt) {
    if (evt.detail.elt.id !== 'orders-more') return
    var last = document.querySelector('#orders-body > [data-id]:last-child')
    var filter = document.getElementById('status-filter')
    if (last) evt.detail.parameters.after = last.dataset.id
    if (filter && filter.value) evt.detail.parameters.status = filter.value
    loadedBefore = document.getElementById('orders-body').children.length
  })
  var loadedBefore = 0
  document.addEventListener('htmx:afterRequest', function (evt) {
    if (evt.detail.elt.id !== 'orders-more') return
    var body = document.getElementById('orders-body')
    // What was asked for stays: live rows arriving at the top push nothing out until
    // another 100 have come.
    if (body) body.dataset.keep = body.children.length + 100
    showCount()
    var first = body && body.children[loadedBefore] // the first of the rows just loaded
    var button = first && first.querySelector('button')
    if (button) button.focus()
  })

  // ---- two admins at once: a set carries the stock its admin saw -------------------------------
  // What the live cell showed when the admin began typing goes with the form as "expected";
  // if the stock moved meanwhile the server answers 409 and changes nothing, and the form
  // asks again, now expecting the current value.
  function liveStock (form) {
    var cell = form.closest('[role=row]').querySelector('.stock-cell')
    return cell ? cell.dataset.stock : ''
  }
  document.addEventListener('focusin', function (evt) {
    var form = evt.target.closest && evt.target.closest('form.set')
    if (form && !form.dataset.expected) form.dataset.expected = liveStock(form)
  })
  document.addEventListener('focusout', function (evt) {
    var form = evt.target.closest && evt.target.closest('form.set')
    if (form && !evt.target.value) delete form.dataset.expected // left without typing
  })
  document.addEventListener('htmx:configRequest', function (evt) {
    var form = evt.detail.elt
    if (!form.matches || !form.matches('form.set')) return
    evt.detail.parameters.expected = form.dataset.expected || liveStock(form)
  })
  document.addEventListener('htmx:afterRequest', function (evt) {
    var form = evt.detail.elt
    if (!form.matches || !form.matches('form.set')) return
    var current = evt.detail.xhr.getResponseHeader('X-Current-Stock')
    if (evt.detail.xhr.status === 409 && current !== null) {
      form.dataset.expected = current
      var input = form.querySelector('input[name=stock]')
      if (input) { input.focus(); input.select() }
    } else if (evt.detail.successful) {
      delete form.dataset.expected
      form.reset()
    }
  })

  // ---- focus follows the result of an action --------------------------------------------------
  // A control that replaced itself (the cart's "Place order", "Remove") would leave focus on
  // <body>: it moves to what the action said (the cart's message), else to the cart.
  document.addEventListener('htmx:afterSwap', function (evt) {
    var target = evt.detail.target
    // After an outerHTML swap the target is the old element: find its replacement.
    var swapped = target && ((target.id && document.getElementById(target.id)) || target)
    if (!swapped || !document.body.contains(swapped)) return
    if (document.activeElement && document.activeElement !== document.body &&
        document.body.contains(document.activeElement)) return // focus is still somewhere
    var result = swapped.querySelector('.flash') || swapped.querySelector('h2')
    if (!result) return
    if (!result.hasAttribute('tabindex')) result.setAttribute('tabindex', '-1')
    result.focus()
  })

  // ---- toasts --------------------------------------------------------------------------------
  function toast (message, kind) {
    var box = document.getElementById('toasts')
    if (!box) return
    var item = document.createElement('div')
    item.className = 'toast toast-' + (kind || 'info')
    item.setAttribute('role', kind === 'error' ? 'alert' : 'status')
    var text = document.createElement('span')
    text.textContent = message
    var close = document.createElement('button')
    close.type = 'button'
    close.className = 'toast-close'
    close.setAttribute('aria-label', 'Dismiss')
    close.textContent = '×'
    item.appendChild(text)
    item.appendChild(close)
    box.appendChild(item)
    armToasts()
  }

  function armToasts () {
    var box = document.getElementById('toasts')
    if (!box) return
    var toasts = box.querySelectorAll('.toast')
    for (var i = 0; i < toasts.length - 3; i++) toasts[i].remove() // at most 3 on screen
    box.querySelectorAll('.toast:not([data-armed])').forEach(function (item) {
      item.dataset.armed = '1'
      setTimeout(function () { item.remove() }, item.classList.contains('toast-error') ? 9000 : 6000)
    })
  }

  // On a phone the toasts never cover the cart: while it is on screen they stand aside
  // (what they said is in the notifications panel too).
  document.addEventListener('DOMContentLoaded', function () {
    var cart = document.getElementById('cart')
    if (!cart || typeof IntersectionObserver === 'undefined') return
    new IntersectionObserver(function (entries) {
      document.body.classList.toggle('cart-in-view', entries[0].isIntersecting)
    }).observe(cart)
  })

  document.addEventListener('click', function (evt) {
    var close = evt.target.closest && evt.target.closest('.toast-close')
    if (close) close.closest('.toast').remove()
  })
  document.addEventListener('htmx:afterSettle', armToasts)
  document.addEventListener('htmx:oobAfterSwap', armToasts)

  // Error fragments (HTML) are swapped like successes; JSON errors become toasts.
  document.addEventListener('htmx:beforeSwap', function (evt) {
    var xhr = evt.detail.xhr
    var type = xhr.getResponseHeader('Content-Type') || ''
    if (xhr.status >= 400 && type.indexOf('text/html') === 0) {
      evt.detail.shouldSwap = true
      evt.detail.isError = false
    }
  })
  document.addEventListener('htmx:responseError', function (evt) {
    var xhr = evt.detail.xhr
    var message = 'The server answered ' + xhr.status
    try {
      message = JSON.parse(xhr.responseText).error.message
    } catch (ignored) {}
    toast(message, 'error')
  })
  document.addEventListener('htmx:sendError', function () {
    toast('Could not reach the server; check the connection and try again.', 'error')
  })

  // ---- the order trends (dashboard): per minute, live; per hour over 14 days ------------------
  var charts = {}

  function drawTrend (dataId, boxId, label) {
    var data = document.getElementById(dataId)
    var box = document.getElementById(boxId)
    if (!data || !box || typeof uPlot === 'undefined') return
    var raw = data.dataset.points
    var known = charts[boxId]
    if (known && raw === known.raw) return
    var points = JSON.parse(raw)
    if (known) {
      known.raw = raw
      known.chart.setData(points)
      return
    }
    var width = function () { return Math.max(260, box.clientWidth) }
    var chart = new uPlot({
      width: width(),
      height: 220,
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(4, max + 1)] } } },
      axes: [{ stroke: '#5b6475' }, { stroke: '#5b6475' }],
      legend: { show: false },
      series: [{}, { label: label, stroke: '#2447b3', width: 2, fill: 'rgba(36, 71, 179, 0.12)', points: { show: false } }]
    }, points, box)
    charts[boxId] = { chart: chart, raw: raw }
    window.addEventListener('resize', function () { chart.setSize({ width: width(), height: 220 }) })
  }

  function updateTrend () {
    drawTrend('trend-data', 'trend-chart', 'Orders per minute')
    drawTrend('trend-hours-data', 'trend-hours-chart', 'Orders per hour')
  }

  document.addEventListener('DOMContentLoaded', function () {
    updateTrend()
    armToasts()
    applyDatabase()
  })
  document.addEventListener('htmx:afterSettle', flashChanged)
})()
