(function(){var e=globalThis,t=e.ShadowRoot&&(e.ShadyCSS===void 0||e.ShadyCSS.nativeShadow)&&`adoptedStyleSheets`in Document.prototype&&`replace`in CSSStyleSheet.prototype,n=Symbol(),r=new WeakMap,i=class{constructor(e,t,r){if(this._$cssResult$=!0,r!==n)throw Error("CSSResult is not constructable. Use `unsafeCSS` or `css` instead.");this.cssText=e,this.t=t}get styleSheet(){let e=this.o,n=this.t;if(t&&e===void 0){let t=n!==void 0&&n.length===1;t&&(e=r.get(n)),e===void 0&&((this.o=e=new CSSStyleSheet).replaceSync(this.cssText),t&&r.set(n,e))}return e}toString(){return this.cssText}},a=e=>new i(typeof e==`string`?e:e+``,void 0,n),o=(e,...t)=>new i(e.length===1?e[0]:t.reduce((t,n,r)=>t+(e=>{if(!0===e._$cssResult$)return e.cssText;if(typeof e==`number`)return e;throw Error(`Value passed to 'css' function must be a 'css' function result: `+e+`. Use 'unsafeCSS' to pass non-literal values, but take care to ensure page security.`)})(n)+e[r+1],e[0]),e,n),s=(n,r)=>{if(t)n.adoptedStyleSheets=r.map(e=>e instanceof CSSStyleSheet?e:e.styleSheet);else for(let t of r){let r=document.createElement(`style`),i=e.litNonce;i!==void 0&&r.setAttribute(`nonce`,i),r.textContent=t.cssText,n.appendChild(r)}},c=t?e=>e:e=>e instanceof CSSStyleSheet?(e=>{let t=``;for(let n of e.cssRules)t+=n.cssText;return a(t)})(e):e,{is:l,defineProperty:u,getOwnPropertyDescriptor:d,getOwnPropertyNames:ee,getOwnPropertySymbols:te,getPrototypeOf:f}=Object,p=globalThis,m=p.trustedTypes,h=m?m.emptyScript:``,g=p.reactiveElementPolyfillSupport,_=(e,t)=>e,v={toAttribute(e,t){switch(t){case Boolean:e=e?h:null;break;case Object:case Array:e=e==null?e:JSON.stringify(e)}return e},fromAttribute(e,t){let n=e;switch(t){case Boolean:n=e!==null;break;case Number:n=e===null?null:Number(e);break;case Object:case Array:try{n=JSON.parse(e)}catch{n=null}}return n}},y=(e,t)=>!l(e,t),ne={attribute:!0,type:String,converter:v,reflect:!1,useDefault:!1,hasChanged:y};Symbol.metadata??=Symbol(`metadata`),p.litPropertyMetadata??=new WeakMap;var b=class extends HTMLElement{static addInitializer(e){this._$Ei(),(this.l??=[]).push(e)}static get observedAttributes(){return this.finalize(),this._$Eh&&[...this._$Eh.keys()]}static createProperty(e,t=ne){if(t.state&&(t.attribute=!1),this._$Ei(),this.prototype.hasOwnProperty(e)&&((t=Object.create(t)).wrapped=!0),this.elementProperties.set(e,t),!t.noAccessor){let n=Symbol(),r=this.getPropertyDescriptor(e,n,t);r!==void 0&&u(this.prototype,e,r)}}static getPropertyDescriptor(e,t,n){let{get:r,set:i}=d(this.prototype,e)??{get(){return this[t]},set(e){this[t]=e}};return{get:r,set(t){let a=r?.call(this);i?.call(this,t),this.requestUpdate(e,a,n)},configurable:!0,enumerable:!0}}static getPropertyOptions(e){return this.elementProperties.get(e)??ne}static _$Ei(){if(this.hasOwnProperty(_(`elementProperties`)))return;let e=f(this);e.finalize(),e.l!==void 0&&(this.l=[...e.l]),this.elementProperties=new Map(e.elementProperties)}static finalize(){if(this.hasOwnProperty(_(`finalized`)))return;if(this.finalized=!0,this._$Ei(),this.hasOwnProperty(_(`properties`))){let e=this.properties,t=[...ee(e),...te(e)];for(let n of t)this.createProperty(n,e[n])}let e=this[Symbol.metadata];if(e!==null){let t=litPropertyMetadata.get(e);if(t!==void 0)for(let[e,n]of t)this.elementProperties.set(e,n)}this._$Eh=new Map;for(let[e,t]of this.elementProperties){let n=this._$Eu(e,t);n!==void 0&&this._$Eh.set(n,e)}this.elementStyles=this.finalizeStyles(this.styles)}static finalizeStyles(e){let t=[];if(Array.isArray(e)){let n=new Set(e.flat(1/0).reverse());for(let e of n)t.unshift(c(e))}else e!==void 0&&t.push(c(e));return t}static _$Eu(e,t){let n=t.attribute;return!1===n?void 0:typeof n==`string`?n:typeof e==`string`?e.toLowerCase():void 0}constructor(){super(),this._$Ep=void 0,this.isUpdatePending=!1,this.hasUpdated=!1,this._$Em=null,this._$Ev()}_$Ev(){this._$ES=new Promise(e=>this.enableUpdating=e),this._$AL=new Map,this._$E_(),this.requestUpdate(),this.constructor.l?.forEach(e=>e(this))}addController(e){(this._$EO??=new Set).add(e),this.renderRoot!==void 0&&this.isConnected&&e.hostConnected?.()}removeController(e){this._$EO?.delete(e)}_$E_(){let e=new Map,t=this.constructor.elementProperties;for(let n of t.keys())this.hasOwnProperty(n)&&(e.set(n,this[n]),delete this[n]);e.size>0&&(this._$Ep=e)}createRenderRoot(){let e=this.shadowRoot??this.attachShadow(this.constructor.shadowRootOptions);return s(e,this.constructor.elementStyles),e}connectedCallback(){this.renderRoot??=this.createRenderRoot(),this.enableUpdating(!0),this._$EO?.forEach(e=>e.hostConnected?.())}enableUpdating(e){}disconnectedCallback(){this._$EO?.forEach(e=>e.hostDisconnected?.())}attributeChangedCallback(e,t,n){this._$AK(e,n)}_$ET(e,t){let n=this.constructor.elementProperties.get(e),r=this.constructor._$Eu(e,n);if(r!==void 0&&!0===n.reflect){let i=(n.converter?.toAttribute===void 0?v:n.converter).toAttribute(t,n.type);this._$Em=e,i==null?this.removeAttribute(r):this.setAttribute(r,i),this._$Em=null}}_$AK(e,t){let n=this.constructor,r=n._$Eh.get(e);if(r!==void 0&&this._$Em!==r){let e=n.getPropertyOptions(r),i=typeof e.converter==`function`?{fromAttribute:e.converter}:e.converter?.fromAttribute===void 0?v:e.converter;this._$Em=r;let a=i.fromAttribute(t,e.type);this[r]=a??this._$Ej?.get(r)??a,this._$Em=null}}requestUpdate(e,t,n,r=!1,i){if(e!==void 0){let a=this.constructor;if(!1===r&&(i=this[e]),n??=a.getPropertyOptions(e),!((n.hasChanged??y)(i,t)||n.useDefault&&n.reflect&&i===this._$Ej?.get(e)&&!this.hasAttribute(a._$Eu(e,n))))return;this.C(e,t,n)}!1===this.isUpdatePending&&(this._$ES=this._$EP())}C(e,t,{useDefault:n,reflect:r,wrapped:i},a){n&&!(this._$Ej??=new Map).has(e)&&(this._$Ej.set(e,a??t??this[e]),!0!==i||a!==void 0)||(this._$AL.has(e)||(this.hasUpdated||n||(t=void 0),this._$AL.set(e,t)),!0===r&&this._$Em!==e&&(this._$Eq??=new Set).add(e))}async _$EP(){this.isUpdatePending=!0;try{await this._$ES}catch(e){Promise.reject(e)}let e=this.scheduleUpdate();return e!=null&&await e,!this.isUpdatePending}scheduleUpdate(){return this.performUpdate()}performUpdate(){if(!this.isUpdatePending)return;if(!this.hasUpdated){if(this.renderRoot??=this.createRenderRoot(),this._$Ep){for(let[e,t]of this._$Ep)this[e]=t;this._$Ep=void 0}let e=this.constructor.elementProperties;if(e.size>0)for(let[t,n]of e){let{wrapped:e}=n,r=this[t];!0!==e||this._$AL.has(t)||r===void 0||this.C(t,void 0,n,r)}}let e=!1,t=this._$AL;try{e=this.shouldUpdate(t),e?(this.willUpdate(t),this._$EO?.forEach(e=>e.hostUpdate?.()),this.update(t)):this._$EM()}catch(t){throw e=!1,this._$EM(),t}e&&this._$AE(t)}willUpdate(e){}_$AE(e){this._$EO?.forEach(e=>e.hostUpdated?.()),this.hasUpdated||(this.hasUpdated=!0,this.firstUpdated(e)),this.updated(e)}_$EM(){this._$AL=new Map,this.isUpdatePending=!1}get updateComplete(){return this.getUpdateComplete()}getUpdateComplete(){return this._$ES}shouldUpdate(e){return!0}update(e){this._$Eq&&=this._$Eq.forEach(e=>this._$ET(e,this[e])),this._$EM()}updated(e){}firstUpdated(e){}};b.elementStyles=[],b.shadowRootOptions={mode:`open`},b[_(`elementProperties`)]=new Map,b[_(`finalized`)]=new Map,g?.({ReactiveElement:b}),(p.reactiveElementVersions??=[]).push(`2.1.2`);var x=globalThis,S=e=>e,C=x.trustedTypes,w=C?C.createPolicy(`lit-html`,{createHTML:e=>e}):void 0,re=`$lit$`,T=`lit$${Math.random().toFixed(9).slice(2)}$`,E=`?`+T,D=`<${E}>`,O=document,k=()=>O.createComment(``),A=e=>e===null||typeof e!=`object`&&typeof e!=`function`,j=Array.isArray,M=e=>j(e)||typeof e?.[Symbol.iterator]==`function`,ie=`[ 	
\f\r]`,N=/<(?:(!--|\/[^a-zA-Z])|(\/?[a-zA-Z][^>\s]*)|(\/?$))/g,ae=/-->/g,oe=/>/g,P=RegExp(`>|${ie}(?:([^\\s"'>=/]+)(${ie}*=${ie}*(?:[^ \t\n\f\r"'\`<>=]|("|')|))|$)`,`g`),se=/'/g,ce=/"/g,le=/^(?:script|style|textarea|title)$/i,F=(e=>(t,...n)=>({_$litType$:e,strings:t,values:n}))(1),I=Symbol.for(`lit-noChange`),L=Symbol.for(`lit-nothing`),ue=new WeakMap,R=O.createTreeWalker(O,129);function de(e,t){if(!j(e)||!e.hasOwnProperty(`raw`))throw Error(`invalid template strings array`);return w===void 0?t:w.createHTML(t)}var fe=(e,t)=>{let n=e.length-1,r=[],i,a=t===2?`<svg>`:t===3?`<math>`:``,o=N;for(let t=0;t<n;t++){let n=e[t],s,c,l=-1,u=0;for(;u<n.length&&(o.lastIndex=u,c=o.exec(n),c!==null);)u=o.lastIndex,o===N?c[1]===`!--`?o=ae:c[1]===void 0?c[2]===void 0?c[3]!==void 0&&(o=P):(le.test(c[2])&&(i=RegExp(`</`+c[2],`g`)),o=P):o=oe:o===P?c[0]===`>`?(o=i??N,l=-1):c[1]===void 0?l=-2:(l=o.lastIndex-c[2].length,s=c[1],o=c[3]===void 0?P:c[3]===`"`?ce:se):o===ce||o===se?o=P:o===ae||o===oe?o=N:(o=P,i=void 0);let d=o===P&&e[t+1].startsWith(`/>`)?` `:``;a+=o===N?n+D:l>=0?(r.push(s),n.slice(0,l)+re+n.slice(l)+T+d):n+T+(l===-2?t:d)}return[de(e,a+(e[n]||`<?>`)+(t===2?`</svg>`:t===3?`</math>`:``)),r]},pe=class e{constructor({strings:t,_$litType$:n},r){let i;this.parts=[];let a=0,o=0,s=t.length-1,c=this.parts,[l,u]=fe(t,n);if(this.el=e.createElement(l,r),R.currentNode=this.el.content,n===2||n===3){let e=this.el.content.firstChild;e.replaceWith(...e.childNodes)}for(;(i=R.nextNode())!==null&&c.length<s;){if(i.nodeType===1){if(i.hasAttributes())for(let e of i.getAttributeNames())if(e.endsWith(re)){let t=u[o++],n=i.getAttribute(e).split(T),r=/([.?@])?(.*)/.exec(t);c.push({type:1,index:a,name:r[2],strings:n,ctor:r[1]===`.`?ge:r[1]===`?`?_e:r[1]===`@`?ve:B}),i.removeAttribute(e)}else e.startsWith(T)&&(c.push({type:6,index:a}),i.removeAttribute(e));if(le.test(i.tagName)){let e=i.textContent.split(T),t=e.length-1;if(t>0){i.textContent=C?C.emptyScript:``;for(let n=0;n<t;n++)i.append(e[n],k()),R.nextNode(),c.push({type:2,index:++a});i.append(e[t],k())}}}else if(i.nodeType===8){if(i.data===E)c.push({type:2,index:a});else{let e=-1;for(;(e=i.data.indexOf(T,e+1))!==-1;)c.push({type:7,index:a}),e+=T.length-1}}a++}}static createElement(e,t){let n=O.createElement(`template`);return n.innerHTML=e,n}};function z(e,t,n=e,r){if(t===I)return t;let i=r===void 0?n._$Cl:n._$Co?.[r],a=A(t)?void 0:t._$litDirective$;return i?.constructor!==a&&(i?._$AO?.(!1),a===void 0?i=void 0:(i=new a(e),i._$AT(e,n,r)),r===void 0?n._$Cl=i:(n._$Co??=[])[r]=i),i!==void 0&&(t=z(e,i._$AS(e,t.values),i,r)),t}var me=class{constructor(e,t){this._$AV=[],this._$AN=void 0,this._$AD=e,this._$AM=t}get parentNode(){return this._$AM.parentNode}get _$AU(){return this._$AM._$AU}u(e){let{el:{content:t},parts:n}=this._$AD,r=(e?.creationScope??O).importNode(t,!0);R.currentNode=r;let i=R.nextNode(),a=0,o=0,s=n[0];for(;s!==void 0;){if(a===s.index){let t;s.type===2?t=new he(i,i.nextSibling,this,e):s.type===1?t=new s.ctor(i,s.name,s.strings,this,e):s.type===6&&(t=new ye(i,this,e)),this._$AV.push(t),s=n[++o]}a!==s?.index&&(i=R.nextNode(),a++)}return R.currentNode=O,r}p(e){let t=0;for(let n of this._$AV)n!==void 0&&(n.strings===void 0?n._$AI(e[t]):(n._$AI(e,n,t),t+=n.strings.length-2)),t++}},he=class e{get _$AU(){return this._$AM?._$AU??this._$Cv}constructor(e,t,n,r){this.type=2,this._$AH=L,this._$AN=void 0,this._$AA=e,this._$AB=t,this._$AM=n,this.options=r,this._$Cv=r?.isConnected??!0}get parentNode(){let e=this._$AA.parentNode,t=this._$AM;return t!==void 0&&e?.nodeType===11&&(e=t.parentNode),e}get startNode(){return this._$AA}get endNode(){return this._$AB}_$AI(e,t=this){e=z(this,e,t),A(e)?e===L||e==null||e===``?(this._$AH!==L&&this._$AR(),this._$AH=L):e!==this._$AH&&e!==I&&this._(e):e._$litType$===void 0?e.nodeType===void 0?M(e)?this.k(e):this._(e):this.T(e):this.$(e)}O(e){return this._$AA.parentNode.insertBefore(e,this._$AB)}T(e){this._$AH!==e&&(this._$AR(),this._$AH=this.O(e))}_(e){this._$AH!==L&&A(this._$AH)?this._$AA.nextSibling.data=e:this.T(O.createTextNode(e)),this._$AH=e}$(e){let{values:t,_$litType$:n}=e,r=typeof n==`number`?this._$AC(e):(n.el===void 0&&(n.el=pe.createElement(de(n.h,n.h[0]),this.options)),n);if(this._$AH?._$AD===r)this._$AH.p(t);else{let e=new me(r,this),n=e.u(this.options);e.p(t),this.T(n),this._$AH=e}}_$AC(e){let t=ue.get(e.strings);return t===void 0&&ue.set(e.strings,t=new pe(e)),t}k(t){j(this._$AH)||(this._$AH=[],this._$AR());let n=this._$AH,r,i=0;for(let a of t)i===n.length?n.push(r=new e(this.O(k()),this.O(k()),this,this.options)):r=n[i],r._$AI(a),i++;i<n.length&&(this._$AR(r&&r._$AB.nextSibling,i),n.length=i)}_$AR(e=this._$AA.nextSibling,t){for(this._$AP?.(!1,!0,t);e!==this._$AB;){let t=S(e).nextSibling;S(e).remove(),e=t}}setConnected(e){this._$AM===void 0&&(this._$Cv=e,this._$AP?.(e))}},B=class{get tagName(){return this.element.tagName}get _$AU(){return this._$AM._$AU}constructor(e,t,n,r,i){this.type=1,this._$AH=L,this._$AN=void 0,this.element=e,this.name=t,this._$AM=r,this.options=i,n.length>2||n[0]!==``||n[1]!==``?(this._$AH=Array(n.length-1).fill(new String),this.strings=n):this._$AH=L}_$AI(e,t=this,n,r){let i=this.strings,a=!1;if(i===void 0)e=z(this,e,t,0),a=!A(e)||e!==this._$AH&&e!==I,a&&(this._$AH=e);else{let r=e,o,s;for(e=i[0],o=0;o<i.length-1;o++)s=z(this,r[n+o],t,o),s===I&&(s=this._$AH[o]),a||=!A(s)||s!==this._$AH[o],s===L?e=L:e!==L&&(e+=(s??``)+i[o+1]),this._$AH[o]=s}a&&!r&&this.j(e)}j(e){e===L?this.element.removeAttribute(this.name):this.element.setAttribute(this.name,e??``)}},ge=class extends B{constructor(){super(...arguments),this.type=3}j(e){this.element[this.name]=e===L?void 0:e}},_e=class extends B{constructor(){super(...arguments),this.type=4}j(e){this.element.toggleAttribute(this.name,!!e&&e!==L)}},ve=class extends B{constructor(e,t,n,r,i){super(e,t,n,r,i),this.type=5}_$AI(e,t=this){if((e=z(this,e,t,0)??L)===I)return;let n=this._$AH,r=e===L&&n!==L||e.capture!==n.capture||e.once!==n.once||e.passive!==n.passive,i=e!==L&&(n===L||r);r&&this.element.removeEventListener(this.name,this,n),i&&this.element.addEventListener(this.name,this,e),this._$AH=e}handleEvent(e){typeof this._$AH==`function`?this._$AH.call(this.options?.host??this.element,e):this._$AH.handleEvent(e)}},ye=class{constructor(e,t,n){this.element=e,this.type=6,this._$AN=void 0,this._$AM=t,this.options=n}get _$AU(){return this._$AM._$AU}_$AI(e){z(this,e)}};(0,x.litHtmlPolyfillSupport)?.(pe,he),(x.litHtmlVersions??=[]).push(`3.3.3`);var be=(e,t,n)=>{let r=n?.renderBefore??t,i=r._$litPart$;if(i===void 0){let e=n?.renderBefore??null;r._$litPart$=i=new he(t.insertBefore(k(),e),e,void 0,n??{})}return i._$AI(e),i},xe=globalThis,V=class extends b{constructor(){super(...arguments),this.renderOptions={host:this},this._$Do=void 0}createRenderRoot(){let e=super.createRenderRoot();return this.renderOptions.renderBefore??=e.firstChild,e}update(e){let t=this.render();this.hasUpdated||(this.renderOptions.isConnected=this.isConnected),super.update(e),this._$Do=be(t,this.renderRoot,this.renderOptions)}connectedCallback(){super.connectedCallback(),this._$Do?.setConnected(!0)}disconnectedCallback(){super.disconnectedCallback(),this._$Do?.setConnected(!1)}render(){return I}};V._$litElement$=!0,V.finalized=!0,xe.litElementHydrateSupport?.({LitElement:V}),(0,xe.litElementPolyfillSupport)?.({LitElement:V}),(xe.litElementVersions??=[]).push(`4.2.2`);var Se=/\{[^{}]+\}/g,Ce=()=>typeof process==`object`&&Number.parseInt(process?.versions?.node?.substring(0,2))>=18&&process.versions.undici;function we(){return Math.random().toString(36).slice(2,11)}function Te(e){let{baseUrl:t=``,Request:n=globalThis.Request,fetch:r=globalThis.fetch,querySerializer:i,bodySerializer:a,pathSerializer:o,headers:s,requestInitExt:c=void 0,...l}={...e};c=Ce()?c:void 0,t=Ne(t);let u=[];async function d(e,d){let{baseUrl:ee,fetch:te=r,Request:f=n,headers:p,params:m={},parseAs:h=`json`,querySerializer:g,bodySerializer:_=a??Ae,pathSerializer:v,body:y,middleware:ne=[],...b}=d||{},x=t;ee&&(x=Ne(ee)??t);let S=typeof i==`function`?i:Oe(i);g&&(S=typeof g==`function`?g:Oe({...typeof i==`object`?i:{},...g}));let C=v||o||ke,w=y===void 0?void 0:_(y,Me(s,p,m.header)),re=Me(w===void 0||w instanceof FormData?{}:{"Content-Type":`application/json`},s,p,m.header),T=[...u,...ne],E={redirect:`follow`,...l,...b,body:w,headers:re},D,O,k=new f(je(e,{baseUrl:x,params:m,querySerializer:S,pathSerializer:C}),E),A;for(let e in b)e in k||(k[e]=b[e]);if(T.length){D=we(),O=Object.freeze({baseUrl:x,fetch:te,parseAs:h,querySerializer:S,bodySerializer:_,pathSerializer:C});for(let t of T)if(t&&typeof t==`object`&&typeof t.onRequest==`function`){let n=await t.onRequest({request:k,schemaPath:e,params:m,options:O,id:D});if(n){if(n instanceof f)k=n;else if(n instanceof Response){A=n;break}else throw Error(`onRequest: must return new Request() or Response() when modifying the request`)}}}if(!A){try{A=await te(k,c)}catch(t){let n=t;if(T.length)for(let t=T.length-1;t>=0;t--){let r=T[t];if(r&&typeof r==`object`&&typeof r.onError==`function`){let t=await r.onError({request:k,error:n,schemaPath:e,params:m,options:O,id:D});if(t){if(t instanceof Response){n=void 0,A=t;break}if(t instanceof Error){n=t;continue}throw Error(`onError: must return new Response() or instance of Error`)}}}if(n)throw n}if(T.length)for(let t=T.length-1;t>=0;t--){let n=T[t];if(n&&typeof n==`object`&&typeof n.onResponse==`function`){let t=await n.onResponse({request:k,response:A,schemaPath:e,params:m,options:O,id:D});if(t){if(!(t instanceof Response))throw Error(`onResponse: must return new Response() when modifying the response`);A=t}}}}let j=A.headers.get(`Content-Length`);if(A.status===204||k.method===`HEAD`||j===`0`&&!A.headers.get(`Transfer-Encoding`)?.includes(`chunked`))return A.ok?{data:void 0,response:A}:{error:void 0,response:A};if(A.ok)return{data:await(async()=>{if(h===`stream`)return A.body;if(h===`json`&&!j){let e=await A.text();return e?JSON.parse(e):void 0}return await A[h]()})(),response:A};let M=await A.text();try{M=JSON.parse(M)}catch{}return{error:M,response:A}}return{request(e,t,n){return d(t,{...n,method:e.toUpperCase()})},GET(e,t){return d(e,{...t,method:`GET`})},PUT(e,t){return d(e,{...t,method:`PUT`})},POST(e,t){return d(e,{...t,method:`POST`})},DELETE(e,t){return d(e,{...t,method:`DELETE`})},OPTIONS(e,t){return d(e,{...t,method:`OPTIONS`})},HEAD(e,t){return d(e,{...t,method:`HEAD`})},PATCH(e,t){return d(e,{...t,method:`PATCH`})},TRACE(e,t){return d(e,{...t,method:`TRACE`})},use(...e){for(let t of e)if(t){if(typeof t!=`object`||!(`onRequest`in t||`onResponse`in t||`onError`in t))throw Error("Middleware must be an object with one of `onRequest()`, `onResponse() or `onError()`");u.push(t)}},eject(...e){for(let t of e){let e=u.indexOf(t);e!==-1&&u.splice(e,1)}}}}function H(e,t,n){if(t==null)return``;if(typeof t==`object`)throw Error("Deeply-nested arrays/objects aren’t supported. Provide your own `querySerializer()` to handle these.");return`${e}=${n?.allowReserved===!0?t:encodeURIComponent(t)}`}function Ee(e,t,n){if(!t||typeof t!=`object`)return``;let r=[],i={simple:`,`,label:`.`,matrix:`;`}[n.style]||`&`;if(n.style!==`deepObject`&&n.explode===!1){for(let e in t)r.push(e,n.allowReserved===!0?t[e]:encodeURIComponent(t[e]));let i=r.join(`,`);switch(n.style){case`form`:return`${e}=${i}`;case`label`:return`.${i}`;case`matrix`:return`;${e}=${i}`;default:return i}}for(let i in t){let a=n.style===`deepObject`?`${e}[${i}]`:i;r.push(H(a,t[i],n))}let a=r.join(i);return n.style===`label`||n.style===`matrix`?`${i}${a}`:a}function De(e,t,n){if(!Array.isArray(t))return``;if(n.explode===!1){let r={form:`,`,spaceDelimited:`%20`,pipeDelimited:`|`}[n.style]||`,`,i=(n.allowReserved===!0?t:t.map(e=>encodeURIComponent(e))).join(r);switch(n.style){case`simple`:return i;case`label`:return`.${i}`;case`matrix`:return`;${e}=${i}`;default:return`${e}=${i}`}}let r={simple:`,`,label:`.`,matrix:`;`}[n.style]||`&`,i=[];for(let r of t)n.style===`simple`||n.style===`label`?i.push(n.allowReserved===!0?r:encodeURIComponent(r)):i.push(H(e,r,n));return n.style===`label`||n.style===`matrix`?`${r}${i.join(r)}`:i.join(r)}function Oe(e){return function(t){let n=[];if(t&&typeof t==`object`)for(let r in t){let i=t[r];if(i!=null){if(Array.isArray(i)){if(i.length===0)continue;n.push(De(r,i,{style:`form`,explode:!0,...e?.array,allowReserved:e?.allowReserved||!1}))}else typeof i==`object`?n.push(Ee(r,i,{style:`deepObject`,explode:!0,...e?.object,allowReserved:e?.allowReserved||!1})):n.push(H(r,i,e))}}return n.join(`&`)}}function ke(e,t){let n=e;for(let r of e.match(Se)??[]){let e=r.substring(1,r.length-1),i=!1,a=`simple`;if(e.endsWith(`*`)&&(i=!0,e=e.substring(0,e.length-1)),e.startsWith(`.`)?(a=`label`,e=e.substring(1)):e.startsWith(`;`)&&(a=`matrix`,e=e.substring(1)),!t||t[e]===void 0||t[e]===null)continue;let o=t[e];n=Array.isArray(o)?n.replace(r,De(e,o,{style:a,explode:i})):typeof o==`object`?n.replace(r,Ee(e,o,{style:a,explode:i})):a===`matrix`?n.replace(r,`;${H(e,o)}`):n.replace(r,a===`label`?`.${encodeURIComponent(o)}`:encodeURIComponent(o))}return n}function Ae(e,t){return e instanceof FormData?e:t&&(t.get instanceof Function?t.get(`Content-Type`)??t.get(`content-type`):t[`Content-Type`]??t[`content-type`])===`application/x-www-form-urlencoded`?new URLSearchParams(e).toString():JSON.stringify(e)}function je(e,t){let n=`${t.baseUrl}${e}`;t.params?.path&&(n=t.pathSerializer(n,t.params.path));let r=t.querySerializer(t.params.query??{});return r.startsWith(`?`)&&(r=r.substring(1)),r&&(n+=`?${r}`),n}function Me(...e){let t=new Headers;for(let n of e){if(!n||typeof n!=`object`)continue;let e=n instanceof Headers?n.entries():Object.entries(n);for(let[n,r]of e)if(r===null)t.delete(n);else if(Array.isArray(r))for(let e of r)t.append(n,e);else r!==void 0&&t.set(n,r)}return t}function Ne(e){return e.endsWith(`/`)?e.substring(0,e.length-1):e}function Pe(){return globalThis.crypto.randomUUID()}function Fe(e){return{"Idempotency-Key":e}}function Ie(e){let{auth:t,baseUrl:n,...r}=e,i=Te({baseUrl:n.replace(/\/+$/,``),...r});return i.use({async onRequest({request:e}){switch(t.kind){case`session`:{let n=await t.token();n&&e.headers.set(`Authorization`,`Bearer ${n}`);break}case`apiKey`:e.headers.set(`x-api-key`,t.key)}return e}}),i}var Le=(()=>{let e=document.currentScript?.src;try{return e?new URL(e).origin:void 0}catch{return}})();function Re(){return window.TollgateWidgets??{}}function ze(e){let t=e||Re().baseUrl||Le;if(!t)throw Error(`no control plane URL: set base-url or window.TollgateWidgets.baseUrl`);return t}async function Be(){let e=Re().getToken;return e?e():window.Clerk?.session?.getToken()}var Ve=new Map;function U(e){let t=ze(e),n=Ve.get(t);return n||(n=Ie({baseUrl:t,auth:{kind:`session`,token:Be}}),Ve.set(t,n)),n}function W(e){if(typeof e==`object`&&e&&`title`in e){let t=e;return t.detail?`${t.title}: ${t.detail}`:t.title}return e instanceof Error?e.message:`the control plane could not be reached`}var He=o`
  :host {
    display: block;
    font-family: var(--tollgate-font, ui-sans-serif, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif);
    color: var(--tollgate-foreground, #09090b);
    font-size: 14px;
    line-height: 1.5;
  }
  .card {
    background: var(--tollgate-background, #ffffff);
    border: 1px solid var(--tollgate-border, #e4e4e7);
    border-radius: var(--tollgate-radius, 0.5rem);
    padding: 1rem 1.25rem;
    box-shadow: 0 1px 2px rgb(0 0 0 / 0.05);
  }
  h2 {
    font-size: 1rem;
    font-weight: 600;
    margin: 0 0 0.25rem;
  }
  .muted {
    color: var(--tollgate-muted, #71717a);
  }
  .error {
    color: var(--tollgate-danger, #dc2626);
  }
  button {
    font: inherit;
    font-weight: 500;
    border-radius: calc(var(--tollgate-radius, 0.5rem) - 2px);
    border: 1px solid var(--tollgate-border, #e4e4e7);
    background: var(--tollgate-background, #ffffff);
    color: inherit;
    padding: 0.4rem 0.9rem;
    cursor: pointer;
  }
  button.primary {
    background: var(--tollgate-accent, #18181b);
    color: var(--tollgate-accent-foreground, #fafafa);
    border-color: transparent;
  }
  button:disabled {
    opacity: 0.5;
    cursor: default;
  }
  button:focus-visible {
    outline: 2px solid var(--tollgate-accent, #18181b);
    outline-offset: 2px;
  }
`;function G(e,t){let n=new Intl.NumberFormat(`en`,{style:`currency`,currency:t}).resolvedOptions().maximumFractionDigits??2;return new Intl.NumberFormat(void 0,{style:`currency`,currency:t.toUpperCase()}).format(e/10**n)}function K(e){return new Intl.DateTimeFormat(void 0,{dateStyle:`medium`}).format(new Date(e))}function q(e){return new Intl.NumberFormat().format(e)}var Ue=class extends V{static{this.properties={limit:{type:Number},baseUrl:{type:String,attribute:`base-url`},portalTarget:{type:String,attribute:`portal-target`},invoices:{state:!0},more:{state:!0},error:{state:!0},loading:{state:!0},opening:{state:!0}}}constructor(){super(),this.limit=10,this.baseUrl=void 0,this.portalTarget=`_self`,this.invoices=void 0,this.more=!1,this.error=void 0,this.loading=!1,this.opening=!1}connectedCallback(){super.connectedCallback(),this.load(!1)}async load(e){this.loading=!0,this.error=void 0;try{let t=e?this.invoices?.at(-1)?.id:void 0,{data:n,error:r}=await U(this.baseUrl).GET(`/api/invoices.list`,{params:{query:{limit:this.limit,...t?{cursor:t}:{}}}});if(!n){this.error=W(r);return}this.invoices=e?[...this.invoices??[],...n]:n,this.more=n.length===this.limit}catch(e){this.error=W(e)}finally{this.loading=!1}}async portal(){this.opening=!0;try{let{data:e,error:t}=await U(this.baseUrl).POST(`/api/payments/portal.create`,{body:{}});if(!e){this.error=W(t);return}this.portalTarget===`_blank`?window.open(e.url,`_blank`,`noopener`):window.location.assign(e.url)}catch(e){this.error=W(e)}finally{this.opening=!1}}render(){let e=this.invoices;return F`<div class="card">
      <div class="head">
        <h2>Invoices</h2>
        <button class="primary" ?disabled=${this.opening} @click=${()=>this.portal()}>
          ${this.opening?`Opening…`:`Manage billing`}
        </button>
      </div>
      ${this.error?F`<p class="error" role="alert">Invoices are unavailable right now (${this.error}).</p>`:L}
      ${e===void 0?this.error?L:F`<p class="muted" role="status">Loading invoices…</p>`:e.length===0?F`<p class="muted">No invoices yet.</p>`:F`<table>
              <thead>
                <tr><th scope="col">Date</th><th scope="col">Amount</th><th scope="col">Status</th><th scope="col"><span class="sr">Link</span></th></tr>
              </thead>
              <tbody>
                ${e.map(e=>F`<tr data-invoice-id=${e.id}>
                    <td>${K(e.created)}</td>
                    <td class="amount">${G(e.total,e.currency)}</td>
                    <td><span class="status ${e.status}">${e.status}</span></td>
                    <td class="link">${e.url?F`<a href=${e.url} target="_blank" rel="noopener noreferrer">View</a>`:L}</td>
                  </tr>`)}
              </tbody>
            </table>`}
      ${this.more?F`<button ?disabled=${this.loading} @click=${()=>this.load(!0)}>
            ${this.loading?`Loading…`:`Load more`}
          </button>`:L}
    </div>`}static{this.styles=[He,o`
      .head {
        display: flex;
        justify-content: space-between;
        align-items: center;
        margin-bottom: 0.75rem;
      }
      h2 {
        margin: 0;
      }
      table {
        width: 100%;
        border-collapse: collapse;
        margin-bottom: 0.5rem;
      }
      th {
        text-align: left;
        font-weight: 500;
        color: var(--tollgate-muted, #71717a);
        border-bottom: 1px solid var(--tollgate-border, #e4e4e7);
        padding: 0.4rem 0.25rem;
      }
      td {
        padding: 0.5rem 0.25rem;
        border-bottom: 1px solid var(--tollgate-border, #e4e4e7);
      }
      .amount {
        font-variant-numeric: tabular-nums;
      }
      .link {
        text-align: right;
      }
      a {
        color: inherit;
        font-weight: 500;
      }
      .status {
        display: inline-block;
        font-size: 12px;
        padding: 0 0.5rem;
        border-radius: 999px;
        border: 1px solid var(--tollgate-border, #e4e4e7);
        text-transform: capitalize;
      }
      .status.paid {
        background: #f0fdf4;
        border-color: #bbf7d0;
        color: #166534;
      }
      .status.open {
        background: #fffbeb;
        border-color: #fde68a;
        color: #92400e;
      }
      .sr {
        position: absolute;
        width: 1px;
        height: 1px;
        overflow: hidden;
        clip: rect(0 0 0 0);
      }
    `]}};function J(e){"@babel/helpers - typeof";return J=typeof Symbol==`function`&&typeof Symbol.iterator==`symbol`?function(e){return typeof e}:function(e){return e&&typeof Symbol==`function`&&e.constructor===Symbol&&e!==Symbol.prototype?`symbol`:typeof e},J(e)}var We=`endive`,Ge=function(e){return e===3?`v3`:e},Ke=`https://js.stripe.com`,qe=`${Ke}/${We}/stripe.js`,Je=/^https:\/\/js\.stripe\.com\/v3\/?(\?.*)?$/,Ye=/^https:\/\/js\.stripe\.com\/(v3|[a-z]+)\/stripe\.js(\?.*)?$/,Xe=`loadStripe.setLoadParameters was called but an existing Stripe.js script already exists in the document; existing script parameters will be used`,Ze=function(e){return Je.test(e)||Ye.test(e)},Qe=function(){for(var e=document.querySelectorAll(`script[src^="${Ke}"]`),t=0;t<e.length;t++){var n=e[t];if(Ze(n.src))return n}return null},$e=function(e){var t=e&&!e.advancedFraudSignals?`?advancedFraudSignals=false`:``,n=document.createElement(`script`);n.src=`${qe}${t}`;var r=document.head||document.body;if(!r)throw Error(`Expected document.body not to be null. Stripe.js requires a <body> element.`);return r.appendChild(n),n},et=function(e,t){e&&e._registerWrapper&&e._registerWrapper({name:`stripe-js`,version:`10.2.1`,startTime:t})},Y=null,X=null,Z=null,tt=function(e){return function(t){e(Error(`Failed to load Stripe.js`,{cause:t}))}},nt=function(e,t){return function(){window.Stripe?e(window.Stripe):t(Error(`Stripe.js not available`))}},rt=function(e){if(Y!==null)return Y;var t=function(){return new Promise(function(t,n){if(typeof window>`u`||typeof document>`u`)t(null);else if(window.Stripe&&e&&console.warn(Xe),window.Stripe)t(window.Stripe);else try{var r=Qe();if(r&&e)console.warn(Xe);else if(!r)r=$e(e);else if(r&&Z!==null&&X!==null){var i;r.removeEventListener(`load`,Z),r.removeEventListener(`error`,X),(i=r.parentNode)==null||i.removeChild(r),r=$e(e)}Z=nt(t,n),X=tt(n),r.addEventListener(`load`,Z),r.addEventListener(`error`,X)}catch(e){n(e);return}})};return Y=t().catch(function(){return t()}).catch(function(e){return Y=null,Promise.reject(e)}),Y},it=function(e,t,n){if(e===null)return null;var r=t[0];if(typeof r!=`string`)throw Error(`Expected publishable key to be of type string, got type ${J(r)} instead.`);var i=r.match(/^pk_test/),a=Ge(e.version),o=We;i&&a!==o&&console.warn(`Stripe.js@${a} was loaded on the page, but @stripe/stripe-js@10.2.1 expected Stripe.js@${o}. This may result in unexpected behavior. For more information, see https://docs.stripe.com/sdks/stripejs-versioning`);var s=e.apply(void 0,t);return et(s,n),s},at=function(e){var t=`invalid load parameters; expected object of shape

    {advancedFraudSignals: boolean}

but received

    ${JSON.stringify(e)}
`;if(e===null||J(e)!==`object`)throw Error(t);if(Object.keys(e).length===1&&typeof e.advancedFraudSignals==`boolean`)return e;throw Error(t)},Q,$=!1,ot=function(){for(var e=arguments.length,t=Array(e),n=0;n<e;n++)t[n]=arguments[n];$=!0;var r=Date.now();return rt(Q).then(function(e){return it(e,t,r)})};ot.setLoadParameters=function(e){if($&&Q){var t=at(e);if(Object.keys(t).reduce(function(t,n){return t&&e[n]===Q?.[n]},!0))return}if($)throw Error(`You cannot change load parameters after calling loadStripe`);Q=at(e)};var st=class extends V{static{this.properties={plans:{type:String},baseUrl:{type:String,attribute:`base-url`},stripeKey:{type:String,attribute:`stripe-key`},current:{state:!0},pending:{state:!0},step:{state:!0}}}constructor(){super(),this.plans=``,this.baseUrl=void 0,this.stripeKey=void 0,this.current=void 0,this.pending=void 0,this.step={kind:`choosing`}}connectedCallback(){super.connectedCallback(),this.refresh()}get codes(){return this.plans.split(`,`).map(e=>e.trim()).filter(Boolean)}async refresh(){try{let{data:e,error:t}=await U(this.baseUrl).GET(`/api/me/entitlements.read`);if(!e){this.step={kind:`failed`,message:W(t)};return}this.current=e.planCode,this.pending=e.pendingPlanCode??null}catch(e){this.step={kind:`failed`,message:W(e)}}}async choose(e){this.step={kind:`previewing`,plan:e};try{let{data:t,error:n}=await U(this.baseUrl).POST(`/api/plans/preview`,{body:{newPlanCode:e}});this.step=t?{kind:`previewed`,plan:e,preview:t,key:Pe()}:{kind:`failed`,message:W(n)}}catch(e){this.step={kind:`failed`,message:W(e)}}}async confirm(){let e=this.step;if(e.kind!==`previewed`)return;this.step={...e,kind:`confirming`};let t=U(this.baseUrl);try{if(e.preview.proration){let n=await t.POST(`/api/plans/upgrade.now`,{params:{header:Fe(e.key)},body:{newPlanCode:e.plan}});if(n.response.status===202&&n.data&&`clientSecret`in n.data){await this.authenticate(e.plan,n.data.clientSecret);return}if(!n.data){this.step={kind:`failed`,message:W(n.error)};return}this.finish(`You are on the ${e.plan} plan now.`)}else{let n=await t.POST(`/api/plans/downgrade.schedule`,{params:{header:Fe(e.key)},body:{newPlanCode:e.plan}});if(!n.data){this.step={kind:`failed`,message:W(n.error)};return}this.finish(`The ${n.data.pendingPlanCode} plan starts on ${K(n.data.effectiveAt)}.`)}}catch(e){this.step={kind:`failed`,message:W(e)}}}async authenticate(e,t){this.step={kind:`authenticating`,plan:e};let n=this.stripeKey||Re().stripePublishableKey;if(!n){this.step={kind:`failed`,message:`the payment needs confirming, and no Stripe publishable key is set`};return}let r=await ot(n);if(!r){this.step={kind:`failed`,message:`Stripe.js could not be loaded`};return}let i=await r.confirmCardPayment(t);if(i.error)this.step={kind:`failed`,message:i.error.message??`the payment was not confirmed`};else{for(let t=0;t<60;t++){if(await this.refresh(),this.current===e){this.finish(`Payment confirmed: you are on the ${e} plan now.`);return}await new Promise(e=>setTimeout(e,1e3))}this.finish(`Payment confirmed: the ${e} plan applies in a moment.`)}}finish(e){this.step={kind:`done`,message:e},this.refresh(),this.dispatchEvent(new CustomEvent(`tollgate:plan-changed`,{bubbles:!0,composed:!0})),window.dispatchEvent(new Event(`tollgate:refresh`))}renderPreview(e){let t=e.preview,n=e.kind===`confirming`;return F`<div class="preview" data-plan=${e.plan} data-amount=${t.amount} data-currency=${t.currency}>
      ${t.proration?F`<p><strong>Due now: <span data-due>${G(t.amount,t.currency)}</span></strong></p>
            <ul>
              ${t.items.map(e=>F`<li><span>${e.description}</span><span>${G(e.amount,t.currency)}</span></li>`)}
            </ul>
            <p class="muted">Then ${G(t.nextInvoice.amount,t.nextInvoice.currency)} on
              ${K(t.nextInvoice.at)}.</p>`:F`<p><strong>${G(t.amount,t.currency)}</strong> from ${K(t.nextInvoice.at)}, when
              your current period ends. Nothing is charged now.</p>`}
      <div class="actions">
        <button class="primary" ?disabled=${n} @click=${()=>this.confirm()}>
          ${n?`Working…`:t.proration?`Upgrade to ${e.plan} now`:`Switch to ${e.plan} at renewal`}
        </button>
        <button ?disabled=${n} @click=${()=>this.step={kind:`choosing`}}>Cancel</button>
      </div>
    </div>`}render(){let e=this.step;return F`<div class="card">
      <h2>Plan</h2>
      ${this.current?F`<p class="muted">You are on <strong data-current>${this.current}</strong>${this.pending?F`; <span data-pending>${this.pending}</span> from your next renewal`:L}.</p>`:F`<p class="muted" role="status">Loading…</p>`}
      <div class="plans" role="group" aria-label="Plans">
        ${this.codes.map(t=>F`<button
            data-plan=${t}
            aria-pressed=${e.kind!==`choosing`&&`plan`in e&&e.plan===t}
            ?disabled=${t===this.current||e.kind===`confirming`||e.kind===`previewing`}
            @click=${()=>this.choose(t)}
          >
            ${t}${t===this.current?` (current)`:``}
          </button>`)}
      </div>
      ${e.kind===`previewing`?F`<p class="muted" role="status">Asking Stripe for the exact price…</p>`:L}
      ${e.kind===`previewed`||e.kind===`confirming`?this.renderPreview(e):L}
      ${e.kind===`authenticating`?F`<p role="status">Confirm the payment with your bank…</p>`:L}
      ${e.kind===`done`?F`<p class="done" role="status">${e.message}</p>`:L}
      ${e.kind===`failed`?F`<p class="error" role="alert">${e.message}</p>`:L}
    </div>`}static{this.styles=[He,o`
      .plans {
        display: flex;
        gap: 0.5rem;
        flex-wrap: wrap;
        margin: 0.75rem 0;
      }
      .plans button {
        text-transform: capitalize;
      }
      .plans button[aria-pressed="true"] {
        border-color: var(--tollgate-accent, #18181b);
        box-shadow: 0 0 0 1px var(--tollgate-accent, #18181b);
      }
      .preview {
        border-top: 1px solid var(--tollgate-border, #e4e4e7);
        padding-top: 0.75rem;
      }
      ul {
        list-style: none;
        padding: 0;
        margin: 0.25rem 0;
      }
      li {
        display: flex;
        justify-content: space-between;
        gap: 1rem;
        font-size: 13px;
        padding: 0.15rem 0;
      }
      .actions {
        display: flex;
        gap: 0.5rem;
        margin-top: 0.75rem;
      }
      .done {
        color: #166534;
      }
      p {
        margin: 0.25rem 0;
      }
    `]}},ct=[[`tollgate-usage`,class extends V{static{this.properties={metric:{type:String},refresh:{type:Number},baseUrl:{type:String,attribute:`base-url`},state:{state:!0}}}constructor(){super(),this.loading=!1,this.onVisible=()=>{document.visibilityState===`visible`&&this.load()},this.onRefresh=()=>void this.load(),this.metric=`api_call`,this.refresh=5,this.baseUrl=void 0,this.state={kind:`loading`}}connectedCallback(){super.connectedCallback(),document.addEventListener(`visibilitychange`,this.onVisible),window.addEventListener(`tollgate:refresh`,this.onRefresh),this.load()}disconnectedCallback(){super.disconnectedCallback(),document.removeEventListener(`visibilitychange`,this.onVisible),window.removeEventListener(`tollgate:refresh`,this.onRefresh),clearTimeout(this.timer)}updated(e){e.has(`metric`)&&e.get(`metric`)!==void 0&&this.load()}async load(){if(clearTimeout(this.timer),!this.loading){this.loading=!0;try{let{data:e,error:t}=await U(this.baseUrl).GET(`/api/me/entitlements.read`,{params:{query:{metric:this.metric}}});this.state=e?{kind:`ready`,entitlements:e}:{kind:`error`,message:W(t)}}catch(e){this.state={kind:`error`,message:W(e)}}finally{this.loading=!1,this.refresh>0&&this.isConnected&&(this.timer=setTimeout(()=>void this.load(),this.refresh*1e3))}}}render(){let e=this.state;if(e.kind===`loading`)return F`<div class="card"><p class="muted" role="status">Loading usage…</p></div>`;if(e.kind===`error`)return F`<div class="card" role="alert">
        <h2>Usage</h2>
        <p class="error">Usage is unavailable right now (${e.message}).</p>
        <button @click=${()=>this.load()}>Try again</button>
      </div>`;let t=e.entitlements,n=t.bound??null,r=Math.max(n??t.included,t.included,t.used),i=r>0?Math.min(100,t.used/r*100):0,a=r>0?Math.min(100,t.included/r*100):100,o=t.overageUsed>0,s=t.metric.replace(/_/g,` `);return F`<div class="card" part="card">
      <div class="head">
        <h2>${t.planCode} plan</h2>
        <span class="muted">Resets ${K(t.periodEnd)}</span>
      </div>
      <div
        class="meter"
        part="meter"
        role="meter"
        aria-label="${s} used this period"
        aria-valuemin="0"
        aria-valuemax=${r}
        aria-valuenow=${t.used}
        aria-valuetext="${q(t.used)} of ${q(t.included)} included ${s}s used"
      >
        <div class="fill ${o?`over`:``}" style="width: ${i}%"></div>
        ${n!==null&&n>t.included?F`<div class="mark" style="left: ${a}%" title="included"></div>`:L}
      </div>
      ${t.included===0&&t.used===0?F`<p class="muted">This plan includes no ${s}s.</p>`:F`<p>
            <strong data-used>${q(t.used)}</strong> of
            <span data-included>${q(t.included)}</span> included ${s}s used
            ${t.used===0?F`<span class="muted">— none yet this period</span>`:L}
          </p>`}
      ${o?F`<p class="overage">
            ${q(t.overageUsed)} past the plan${t.overageCost?F`, ${G(t.overageCost.amount,t.overageCost.currency)} so far`:L}${n===null?L:F`; stops at ${q(n)} (${t.boundBy===`budget`?`your spend cap`:`the plan's limit`})`}
          </p>`:L}
    </div>`}static{this.styles=[He,o`
      .head {
        display: flex;
        justify-content: space-between;
        align-items: baseline;
        gap: 1rem;
        margin-bottom: 0.75rem;
      }
      h2 {
        text-transform: capitalize;
        margin: 0;
      }
      .meter {
        position: relative;
        height: 0.5rem;
        border-radius: 999px;
        background: var(--tollgate-track, #f4f4f5);
        overflow: hidden;
        margin-bottom: 0.5rem;
      }
      .fill {
        height: 100%;
        background: var(--tollgate-accent, #18181b);
        border-radius: 999px;
        transition: width 0.3s ease;
      }
      .fill.over {
        background: var(--tollgate-warning, #d97706);
      }
      .mark {
        position: absolute;
        top: 0;
        bottom: 0;
        width: 2px;
        background: var(--tollgate-background, #ffffff);
      }
      p {
        margin: 0.25rem 0 0;
      }
      .overage {
        color: var(--tollgate-warning, #b45309);
      }
    `]}}],[`tollgate-plan-picker`,st],[`tollgate-invoices`,Ue]];for(let[e,t]of ct)customElements.get(e)||customElements.define(e,t)})();